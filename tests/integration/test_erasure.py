"""Erasure on a real worker: what `DELETE /v1/shoppers/{id}` removes stays removed after a restart."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from intent.broker import free_port
from intent.demo import subscribe
from intent.kafka import CompactedTopic, wait_for_lag_zero
from intent.replay import replay
from intent.simulate import Simulator
from intent.window import Window
from tests.integration.conftest import API_TOKEN, PARTITIONS, Deployment
from tests.integration.test_scale_out import partitions_of, shoppers_of, wait_for
from tests.integration.test_stream import JOIN_AND_CATCH_UP_SECONDS, STORY_SHOPPER, story_lines

pytestmark = pytest.mark.integration


async def latest_records(bootstrap: str, topic: str) -> dict[str, bytes | None]:
    """The latest value of each key of `topic` (None: a tombstone), keys as text without JSON quotes."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    latest: dict[str, bytes | None] = {}
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            for messages in (await consumer.getmany(timeout_ms=1000)).values():
                for message in messages:
                    latest[message.key.decode().strip('"')] = message.value
    finally:
        await consumer.stop()
    return latest


def of_story_shopper(records: dict[str, bytes | None]) -> dict[str, bytes | None]:
    return {key: value for key, value in records.items() if key.split("|")[0] == STORY_SHOPPER}


async def test_an_erased_shopper_stays_erased_after_a_restart_and_a_new_event_starts_a_fresh_window(
    deployment: Deployment,
) -> None:
    bootstrap = deployment.broker.bootstrap_servers
    app_id = deployment.app_id
    identities = f"{app_id}-identities"  # as the deployment names it
    environment = {
        "INTENT_WEBHOOK_RETRY_SCHEDULE": "0,3600",  # the deliveries stay pending after the first attempt
        "INTENT_EXPIRY_CHECK_SECONDS": "3600",  # no window expires during the test
    }
    links = CompactedTopic(bootstrap, identities, lambda *_: None)
    await links.start()
    await links.write("anon-story", STORY_SHOPPER.encode())
    await links.write("anon-other", b"someone-else")
    await links.stop()

    first = deployment.start_worker(**environment)
    api = f"http://127.0.0.1:{deployment.web_ports[0]}"
    # an endpoint that refuses connections: each intent change of the story waits there for a retry
    await subscribe(api, API_TOKEN, f"http://127.0.0.1:{free_port()}/hooks", timeout=JOIN_AND_CATCH_UP_SECONDS)
    lines = story_lines()
    others = [orjson.dumps(event) for person in Simulator(seed=5).shoppers(4) for event in person.events]
    await replay(lines + others, bootstrap, deployment.events_topic)
    for topic in (deployment.events_topic, deployment.changes_topic):
        await wait_for_lag_zero(bootstrap, app_id, topic, JOIN_AND_CATCH_UP_SECONDS)
    shoppers_before = await shoppers_of(deployment.web_ports[0])
    sessions = {orjson.loads(line)["context"]["sessionId"] for line in lines}

    async with aiohttp.ClientSession(api) as http:
        async with http.delete(f"/v1/shoppers/{STORY_SHOPPER}") as response:
            assert response.status == 401
        async with http.delete(f"/v1/shoppers/{STORY_SHOPPER}", headers={"Authorization": f"Bearer {API_TOKEN}"}) as (
            response
        ):
            answer: dict[str, Any] = await response.json()
            assert response.status == 200, answer
    assert answer == {
        "shopper_id": STORY_SHOPPER,
        "status": "erased",
        "removed": {
            "shopper_windows": 1,
            "session_windows": len(sessions),
            "frequency_caps": 1,
            "pending_deliveries": 2,  # the coffee and the cold intent changes, one subscription
            "latest_changes": 1,  # the same two changes, kept for the read API
            "identity_links": 1,
        },
    }, deployment.logs()
    assert await shoppers_of(deployment.web_ports[0]) == shoppers_before - 1

    first.send_signal(signal.SIGTERM)
    first.wait(timeout=60)
    deployment.start_worker(**environment)
    port = deployment.web_ports[1]

    async def restored() -> bool:
        return await partitions_of(port) == list(range(PARTITIONS)) and await shoppers_of(port) > 0

    await wait_for(restored, "the restarted worker owns every partition and restored the windows")
    await asyncio.sleep(2)  # a restored window of the erased shopper would be counted by now
    assert await shoppers_of(port) == shoppers_before - 1, deployment.logs()

    # tombstones are the latest record of every state the erased shopper had
    for table in ("shopper-windows", "session-windows", "delivery-caps", "latest-changes"):
        records = of_story_shopper(await latest_records(bootstrap, f"{app_id}-{table}-changelog"))
        assert records and all(value is None for value in records.values()), table
    pending = (await latest_records(bootstrap, f"{app_id}-webhook-deliveries-changelog")).values()
    assert sum(value is None for value in pending) == 2
    assert all(orjson.loads(value)["payload"]["shopper_id"] != STORY_SHOPPER for value in pending if value)
    assert await latest_records(bootstrap, identities) == {"anon-story": None, "anon-other": b"someone-else"}

    later = {**orjson.loads(lines[-1]), "messageId": "after-the-erasure", "timestamp": "2026-02-02T10:00:00Z"}
    await replay([orjson.dumps(later)], bootstrap, deployment.events_topic)
    await wait_for_lag_zero(bootstrap, app_id, deployment.events_topic, JOIN_AND_CATCH_UP_SECONDS)
    window = of_story_shopper(await latest_records(bootstrap, f"{app_id}-shopper-windows-changelog"))[STORY_SHOPPER]
    assert window is not None
    assert [record["m"] for record in Window.from_bytes(window).records()] == ["after-the-erasure"]
    assert await shoppers_of(port) == shoppers_before
