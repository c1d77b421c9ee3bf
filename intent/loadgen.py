"""Simulated shoppers sent through the collector at a steady rate: the docker stack's load generator
and the collector's load test.

Events go out as Segment `batch` calls of up to `batch_size` messages, paced to `rate` events/s;
each call's latency and status are recorded.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp


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
    from training.simulate import Simulator, coffee_tea_cold_story

    simulator = Simulator(seed=seed)
    people = [coffee_tea_cold_story(simulator.world), *simulator.shoppers(shoppers)]
    yield from sorted((event for person in people for event in person.events), key=lambda e: e["timestamp"])


async def send_load(
    collector_url: str,
    write_key: str,
    messages: Iterator[dict[str, Any]],
    rate: float,
    batch_size: int = 20,
    limit: int | None = None,
) -> LoadReport:
    report = LoadReport()
    auth = {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}
    pending: set[asyncio.Task[None]] = set()
    started = time.perf_counter()

    async with aiohttp.ClientSession(collector_url, headers=auth) as http:

        async def post(batch: list[dict[str, Any]]) -> None:
            sent = time.perf_counter()
            try:
                async with http.post("/v1/batch", json={"batch": batch}) as response:
                    answer = await response.json(content_type=None)
                    report.latencies.append(time.perf_counter() - sent)
                    if response.status == 200:
                        report.events_accepted += answer["accepted"]
                    else:
                        report.failed_calls += 1
            except aiohttp.ClientError:
                report.failed_calls += 1

        batch: list[dict[str, Any]] = []
        for message in messages:
            batch.append(message)
            if len(batch) == batch_size or (limit is not None and report.events_sent + len(batch) >= limit):
                due = started + (report.events_sent + len(batch)) / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                task = asyncio.create_task(post(batch))
                pending.add(task)
                task.add_done_callback(pending.discard)
                report.events_sent += len(batch)
                report.calls += 1
                batch = []
                if limit is not None and report.events_sent >= limit:
                    break
        if batch:
            await post(batch)
            report.events_sent += len(batch)
            report.calls += 1
        await asyncio.gather(*pending)
    report.seconds = time.perf_counter() - started
    return report
