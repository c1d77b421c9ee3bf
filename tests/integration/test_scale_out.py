"""Two workers in one consumer group: they split the partitions, and one takes over from the other.

The consumer group moves the partitions; what this pins down is that a worker survives the
rebalances that come with scaling out and failing over, and that the survivor rebuilds the dead
worker's windows from the changelogs before it sees any new event.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from intent.kafka import wait_for_lag_zero
from intent.replay import replay
from tests.integration.conftest import PARTITIONS, Deployment, read_until
from tests.integration.test_stream import cold_shift, cold_shift_seen, story_lines

pytestmark = pytest.mark.integration

# A killed worker leaves the group after this many seconds; the embedded broker also holds every
# join for half of it, so a short timeout keeps both the joins and the failover quick.
SESSION_TIMEOUT = "10"
GROUP_CHANGE_SECONDS = 120.0  # bound on a worker's start, a rebalance and a table recovery


async def status(port: int) -> dict[str, Any]:
    """The worker's /status, or an empty dict while its web server does not answer."""
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/status") as response:
            return dict(await response.json())
    except aiohttp.ClientError:
        return {}


async def partitions_of(port: int) -> list[int]:
    return list((await status(port)).get("partitions", []))


async def shoppers_of(port: int) -> int:
    return int((await status(port)).get("shoppers", 0))


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    try:
        async with asyncio.timeout(GROUP_CHANGE_SECONDS):
            while not await condition():
                await asyncio.sleep(1)
    except TimeoutError:
        pytest.fail(f"not within {GROUP_CHANGE_SECONDS:.0f} s: {what}")


async def test_two_workers_split_the_partitions_and_the_survivor_takes_over_with_the_state(
    deployment: Deployment,
) -> None:
    bootstrap = deployment.broker.bootstrap_servers
    environment = {"INTENT_GROUP_SESSION_TIMEOUT_SECONDS": SESSION_TIMEOUT}
    workers = [deployment.start_worker(**environment)]
    ports = deployment.web_ports

    async def first_owns_all() -> bool:
        return await partitions_of(ports[0]) == list(range(PARTITIONS))

    await wait_for(first_owns_all, "the first worker owns every partition")
    workers.append(deployment.start_worker(**environment))

    async def split() -> bool:
        first, second = await partitions_of(ports[0]), await partitions_of(ports[1])
        return bool(first) and bool(second) and sorted(first + second) == list(range(PARTITIONS))

    await wait_for(split, "the two workers split the partitions")
    assert all(worker.poll() is None for worker in workers), deployment.logs()

    # the story up to its first tea event: one shopper, so one worker holds all of its windows
    lines = story_lines()
    first_tea = next(i for i, line in enumerate(lines) if b'"herbal tea"' in line)
    await replay(lines[: first_tea + 1], bootstrap, deployment.events_topic)
    await wait_for_lag_zero(bootstrap, deployment.app_id, deployment.events_topic, GROUP_CHANGE_SECONDS)
    shoppers = [await shoppers_of(port) for port in ports]
    owner = 0 if shoppers[0] else 1
    survivor = 1 - owner
    assert shoppers[owner] >= 1 and shoppers[survivor] == 0

    workers[owner].send_signal(signal.SIGKILL)
    workers[owner].wait()

    async def survivor_owns_all() -> bool:
        return await partitions_of(ports[survivor]) == list(range(PARTITIONS))

    async def survivor_restored_the_windows() -> bool:
        return await shoppers_of(ports[survivor]) == shoppers[owner]

    await wait_for(survivor_owns_all, "the survivor takes over every partition")
    await wait_for(survivor_restored_the_windows, "the survivor restores the dead worker's windows")
    assert workers[survivor].poll() is None, deployment.logs()

    await replay(lines[first_tea + 1 :], bootstrap, deployment.events_topic)
    records = await read_until(bootstrap, deployment.changes_topic, cold_shift_seen, GROUP_CHANGE_SECONDS)
    assert cold_shift_seen(records), deployment.logs()
    # "from coffee" is known only to a worker that restored the dead worker's window of this shopper
    assert cold_shift(records)["from_intent"]["id"] == "coffee_ritual"
