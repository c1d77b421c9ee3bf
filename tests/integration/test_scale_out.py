"""Two workers in one consumer group: they split the partitions, and one takes over from the other."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer

from intent.kafka import wait_for_lag_zero
from intent.replay import replay
from tests.integration.conftest import PARTITIONS, Deployment, read_until
from tests.integration.test_stream import STORY_SHOPPER, cold_shift, cold_shift_seen, story_lines

pytestmark = pytest.mark.integration

SESSION_TIMEOUT = "10"  # seconds: how long the group waits for a killed worker before failing over


async def status(port: int) -> dict | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/status") as response:
            return await response.json()
    except aiohttp.ClientError:
        return None


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await condition():
                await asyncio.sleep(1)
    except TimeoutError:
        pytest.fail(f"not within {timeout:.0f} s: {what}")


async def partitions_of(ports: list[int]) -> list[list[int]]:
    return [((await status(port)) or {}).get("partitions", []) for port in ports]


async def story_partition(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        while True:
            for tp, messages in (await consumer.getmany(timeout_ms=1000)).items():
                if any(m.key == STORY_SHOPPER.encode() for m in messages):
                    return tp.partition
    finally:
        await consumer.stop()


async def test_two_workers_split_the_partitions_and_the_survivor_takes_over_with_the_state(
    deployment: Deployment,
) -> None:
    bootstrap = deployment.broker.bootstrap_servers
    timeout = {"INTENT_GROUP_SESSION_TIMEOUT_SECONDS": SESSION_TIMEOUT}
    workers = [deployment.start_worker(**timeout)]
    await wait_for(lambda: _owns_all(deployment.web_ports[:1]), 120, "the first worker owns every partition")
    workers.append(deployment.start_worker(**timeout))

    async def split() -> bool:
        first, second = await partitions_of(deployment.web_ports)
        return bool(first) and bool(second) and sorted(first + second) == list(range(PARTITIONS))

    await wait_for(split, 120, "the two workers split the partitions")
    first, second = await partitions_of(deployment.web_ports)
    assert set(first).isdisjoint(second)

    # the story up to its first tea event, processed by whichever worker owns the shopper
    lines = story_lines()
    first_tea = next(i for i, line in enumerate(lines) if b'"herbal tea"' in line)
    await replay(lines[: first_tea + 1], bootstrap, deployment.events_topic)
    await wait_for_lag_zero(bootstrap, deployment.app_id, deployment.events_topic, 120)
    partition = await story_partition(bootstrap, deployment.events_topic)
    owner = 0 if partition in first else 1
    survivor = 1 - owner

    workers[owner].send_signal(signal.SIGKILL)
    workers[owner].wait()
    await wait_for(
        lambda: _owns_all(deployment.web_ports[survivor : survivor + 1]), 120, "the survivor takes over every partition"
    )

    await replay(lines[first_tea + 1 :], bootstrap, deployment.events_topic)
    records = await read_until(bootstrap, deployment.changes_topic, cold_shift_seen, 120)
    assert cold_shift_seen(records), deployment.logs()
    # "from coffee" is known only to a worker that restored the dead worker's window of this shopper
    assert cold_shift(records)["from_intent"]["id"] == "coffee_ritual"
    survivor_status = await status(deployment.web_ports[survivor])
    assert survivor_status is not None and survivor_status["shoppers"] >= 1


async def _owns_all(ports: list[int]) -> bool:
    (partitions,) = await partitions_of(ports)
    return partitions == list(range(PARTITIONS))
