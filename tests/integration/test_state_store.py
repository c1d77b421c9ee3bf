"""Tables on RocksDB (`INTENT_STATE_STORE=rocksdb`) on a real broker: a restarted worker resumes from
the changelog offsets stored on its disk instead of reading every changelog again, and its windows,
the expiry sweep and erasure work as they do in memory."""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import faust
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from intent.events import event_from_dict, iso_time
from intent.kafka import end_offsets, ensure_topics, producer
from intent.model import IntentModel
from intent.replay import replay
from intent.settings import Settings, get_settings
from intent.simulate import Simulator
from intent.stores import DictStore
from intent.stream.tables import discard_stale_state, state_table
from intent.tracking import IntentTracker
from intent.window import Window, WindowPolicy
from tests.integration.conftest import API_TOKEN, PARTITIONS, Deployment
from tests.integration.test_broker_freeze import latest_per_key, same_window
from tests.integration.test_scale_out import partitions_of, shoppers_of, wait_for
from tests.integration.test_stream import JOIN_AND_CATCH_UP_SECONDS

pytestmark = pytest.mark.integration

TABLES = ("session-windows", "shopper-windows", "webhook-deliveries", "delivery-caps")


async def metric(port: int, name: str) -> float:
    """The sum of a metric's samples (all labels) on the worker's /metrics."""
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http, http.get("/metrics") as response:
        text = await response.text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


async def changelog_records(bootstrap: str, app_id: str) -> int:
    """How many records the worker's changelog topics hold: what a start on memory reads again.
    Read to their ends: the embedded broker's ListOffsets answers short of the end (`intent.app`)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(f"{app_id}-{table}-changelog", partition)
            for table in TABLES
            for partition in consumer.partitions_for_topic(f"{app_id}-{table}-changelog") or ()
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records = 0
        while (batches := await consumer.getmany(timeout_ms=2000)) or records == 0:
            records += sum(len(messages) for messages in batches.values())
        return records
    finally:
        await consumer.stop()


async def wait_until_processed(deployment: Deployment, events: int) -> None:
    """Until the worker has committed the first `events` input offsets (`intent.kafka.wait_for_lag_zero`
    asks the embedded broker for the topic's end, which it answers short of it: see `intent.app`)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=deployment.broker.bootstrap_servers, group_id=deployment.app_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(deployment.events_topic, p) for p in range(PARTITIONS)]
        async with asyncio.timeout(JOIN_AND_CATCH_UP_SECONDS):
            while sum([await consumer.committed(tp) or 0 for tp in partitions]) < events:
                await asyncio.sleep(0.5)
    finally:
        await consumer.stop()


async def restart(deployment: Deployment, worker: Any, environment: dict[str, str]) -> int:
    """Stop `worker`, start it again on the same data directory, wait until it owns every partition;
    returns its web port."""
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)
    deployment.start_worker(**environment)
    port = deployment.web_ports[-1]

    async def owns_every_partition() -> bool:
        try:
            return await partitions_of(port) == list(range(PARTITIONS))
        except aiohttp.ClientError:
            return False

    await wait_for(owns_every_partition, "the restarted worker owns every partition")
    return port


async def test_a_worker_on_rocksdb_restarts_from_its_stored_offsets_and_its_windows_equal_the_offline_ones(
    deployment: Deployment,
) -> None:
    bootstrap = deployment.broker.bootstrap_servers
    people = Simulator(seed=23).shoppers(30)
    events = sorted((e for p in people for e in p.events), key=lambda e: e["timestamp"])
    lines = [orjson.dumps(e) for e in events]
    head = len(lines) * 2 // 3
    environment = {
        "INTENT_STATE_STORE": "rocksdb",
        "INTENT_DATA_DIR": str(deployment.root / "rocksdb-worker"),  # the same disk after the restart
        "INTENT_EXPIRY_CHECK_SECONDS": "3600",  # the offline tracker expires nothing either
    }
    worker = deployment.start_worker(**environment)
    await replay(lines[:head], bootstrap, deployment.events_topic)
    await wait_until_processed(deployment, head)
    written = await changelog_records(bootstrap, deployment.app_id)

    port = await restart(deployment, worker, environment)
    await replay(lines[head:], bootstrap, deployment.events_topic)
    await wait_until_processed(deployment, len(lines))
    recovered = await metric(port, "intent_state_recovered_records_total")  # the recovery precedes the events

    offline_sessions, offline_shoppers = DictStore(), DictStore()
    model = IntentModel.load(get_settings().model_dir)
    offline = IntentTracker(model, WindowPolicy(), offline_sessions, offline_shoppers)
    offline.process([event_from_dict(e) for e in events])
    offline.save()
    sessions = await latest_per_key(bootstrap, f"{deployment.app_id}-session-windows-changelog")
    shoppers = await latest_per_key(bootstrap, f"{deployment.app_id}-shopper-windows-changelog")
    print(f"\nchangelog records before the restart: {written}; read again by the restarted worker: {recovered:.0f}")
    # a start on memory reads every record; on RocksDB only those after the offsets stored on disk
    assert written > 100 and recovered < written / 10, deployment.logs()
    assert set(shoppers) == set(offline_shoppers.data) and set(sessions) == set(offline_sessions.data)
    assert [key for key, window in offline_shoppers.items() if not same_window(shoppers[key], window)] == []
    assert [key for key, window in offline_sessions.items() if not same_window(sessions[key], window)] == []
    assert await shoppers_of(port) == len(offline_shoppers.data)


async def test_on_rocksdb_the_sweep_expires_idle_windows_and_an_erased_shopper_stays_erased_after_a_restart(
    deployment: Deployment,
) -> None:
    bootstrap = deployment.broker.bootstrap_servers
    app_id = deployment.app_id
    now = time.time()

    def viewed(shopper: str, at: float, number: int) -> bytes:
        return orjson.dumps(
            {
                "event": "Product Viewed",
                "userId": shopper,
                "messageId": f"{shopper}-{number}",
                "timestamp": iso_time(at),
                "properties": {"category": "Coffee Beans"},
                "context": {"sessionId": f"{shopper}-visit"},
            }
        )

    # a shopper last seen ten days ago (past the 7 days a shopper window spans), then 40 shoppers now:
    # every partition's event clock moves past her window's span
    idle = [viewed("idle-shopper", now - 10 * 86400 + 60 * number, number) for number in range(3)]
    active = [viewed(f"shopper-{s}", now - 3600 + 60 * number, number) for s in range(40) for number in range(3)]
    environment = {
        "INTENT_STATE_STORE": "rocksdb",
        "INTENT_DATA_DIR": str(deployment.root / "rocksdb-worker"),
        "INTENT_EXPIRY_CHECK_SECONDS": "1",
        "INTENT_ERASURES_TOPIC": f"{app_id}-erasures",
        "INTENT_IDENTITIES_TOPIC": f"{app_id}-identities",
    }
    worker = deployment.start_worker(**environment)
    port = deployment.web_ports[0]
    await replay(idle + active, bootstrap, deployment.events_topic)
    await wait_until_processed(deployment, len(idle + active))
    await asyncio.sleep(3)  # three expiry sweeps
    shoppers = await latest_per_key(bootstrap, f"{app_id}-shopper-windows-changelog")
    assert "idle-shopper" not in shoppers and len(shoppers) == 40, deployment.logs()
    assert await shoppers_of(port) == 40

    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http,
        http.delete("/v1/shoppers/shopper-0", headers={"Authorization": f"Bearer {API_TOKEN}"}) as response,
    ):
        answer: dict[str, Any] = await response.json()
    assert response.status == 200, answer
    assert answer["removed"]["shopper_windows"] == 1 and answer["removed"]["session_windows"] == 1
    assert await shoppers_of(port) == 39

    port = await restart(deployment, worker, environment)

    async def recovered() -> bool:  # from its disk: a shopper that came back would make it 40
        return await shoppers_of(port) == 39

    await wait_for(recovered, "the restarted worker holds the 39 shoppers left")
    await replay([viewed("shopper-0", now, 9)], bootstrap, deployment.events_topic)
    await wait_until_processed(deployment, len(idle + active) + 1)
    window = (await latest_per_key(bootstrap, f"{app_id}-shopper-windows-changelog"))["shopper-0"]
    assert [record["m"] for record in Window.from_bytes(window).records()] == ["shopper-0-9"]  # a fresh window
    assert await shoppers_of(port) == 40


async def test_a_table_partition_on_disk_past_its_changelogs_end_is_discarded_before_the_worker_starts(
    deployment: Deployment,
) -> None:
    """What remains on disk after the broker lost its topics (the embedded one keeps them in memory
    only) must not be served: the partition is rebuilt from its changelog instead."""
    bootstrap = deployment.broker.bootstrap_servers
    settings = Settings(
        broker_url=deployment.broker.url,
        app_id=deployment.app_id,
        data_dir=deployment.root / "rocksdb-worker",
        state_store="rocksdb",
    )
    changelog = f"{deployment.app_id}-shopper-windows-changelog"
    await ensure_topics(bootstrap, [changelog], PARTITIONS)
    client = producer(bootstrap)
    await client.start()
    try:
        await asyncio.gather(*[await client.send(changelog, b"window", key=b'"ada"', partition=0) for _ in range(3)])
    finally:
        await client.stop()
    app = faust.App(deployment.app_id, store="rocksdb://", datadir=str(settings.data_dir))
    table = state_table(app, "shopper-windows", settings)
    for partition, offset in ((0, 2), (1, 2)):  # partition 0's changelog holds offsets 0 to 2, partition 1's none
        table.data._db_for_partition(partition).put(b'"ada"', b"window")
        table.data.set_persisted_offset(TP(changelog, partition), offset)
    table.data._dbs.clear()  # closed, as at a stop
    gc.collect()

    await discard_stale_state(settings, app)
    assert sorted(path.name for path in Path(app.conf.tabledir).glob("*.db")) == ["shopper-windows-0.db"]


async def test_where_a_changelog_ends_is_read_right_when_its_last_batch_holds_several_records(
    deployment: Deployment,
) -> None:
    """The recovery reads each changelog to its end: the embedded broker's ListOffsets answers short
    of it when the last batch holds several records (windows of a few KB are batched), so a restart
    applied a window's older record and served that."""
    bootstrap = deployment.broker.bootstrap_servers
    topic = f"{deployment.app_id}-batched"
    await ensure_topics(bootstrap, [topic], 2)
    client = producer(bootstrap)
    await client.start()
    try:
        await asyncio.gather(*[await client.send(topic, b"window", partition=0) for _ in range(8)])
    finally:
        await client.stop()
    partitions = [TopicPartition(topic, 0), TopicPartition(topic, 1), TopicPartition(f"{topic}-none", 0)]
    assert await end_offsets(bootstrap, partitions) == dict(zip(partitions, [8, 0, 0], strict=True))
