"""Simulated shoppers sent through the collector at a steady rate: the docker stack's load generator
and the collector's load test.

Events go out as Segment `batch` calls of up to `batch_size` messages (or single `track` calls),
paced to `rate` events/s; each call's latency and status are recorded.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from intent.simulate import Simulator, coffee_tea_cold_story


@dataclass
class LoadReport:
    events_sent: int = 0
    events_accepted: int = 0
    calls: int = 0
    failed_calls: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)


def simulated_messages(shoppers: int, seed: int) -> Iterator[dict[str, Any]]:
    """The simulator's shoppers, interleaved in time order, as Segment track messages."""
    simulator = Simulator(seed=seed)
    people = [coffee_tea_cold_story(simulator.world), *simulator.shoppers(shoppers)]
    yield from sorted((event for person in people for event in person.events), key=lambda e: e["timestamp"])


async def send_load(
    collector_url: str,
    write_key: str,
    messages: Iterable[dict[str, Any]],
    rate: float,
    batch_size: int | None = 20,
) -> LoadReport:
    """Send `messages` at `rate` events/s: batch calls of `batch_size`, or single `/v1/track` calls
    when it is None. Each call starts at its scheduled time whatever the earlier ones are doing, and
    its latency counts from that time, so a saturated collector shows as queueing, not as a slower
    sender."""
    report = LoadReport()
    auth = {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}
    tasks = []
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(collector_url, headers=auth, connector=connector) as http:

        async def call(path: str, body: bytes, due: float) -> None:
            try:
                async with http.post(path, data=body, headers={"Content-Type": "application/json"}) as response:
                    answer = await response.json(content_type=None)
                    report.latencies.append(time.perf_counter() - due)
                    if response.status == 200:
                        report.events_accepted += answer["accepted"]
                    else:
                        report.failed_calls += 1
            except aiohttp.ClientError:
                report.failed_calls += 1

        started = time.perf_counter()
        for path, body, events in _calls(messages, batch_size):
            due = started + (report.events_sent + events) / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(call(path, orjson.dumps(body), due)))
            report.events_sent += events
            report.calls += 1
        await asyncio.gather(*tasks)
        report.seconds = time.perf_counter() - started
    return report


def _calls(messages: Iterable[dict[str, Any]], batch_size: int | None) -> Iterator[tuple[str, Any, int]]:
    """(path, body, events) of each call."""
    if batch_size is None:
        for message in messages:
            yield "/v1/track", message, 1
        return
    batch: list[dict[str, Any]] = []
    for message in messages:
        batch.append(message)
        if len(batch) == batch_size:
            yield "/v1/batch", {"batch": batch}, len(batch)
            batch = []
    if batch:
        yield "/v1/batch", {"batch": batch}, len(batch)
