"""Send events from a file to the events topic, keyed by shopper so each shopper stays in order.

Lines that are not valid events are sent as they are: the worker dead-letters them with the reason,
which is what a real producer's mistakes would meet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from intent.events import InvalidEvent, parse_event
from intent.kafka import producer


@dataclass
class ReplayReport:
    sent: int = 0
    invalid: int = 0  # sent anyway; the worker dead-letters them
    seconds: float = 0.0


def read_jsonl(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                yield line.rstrip(b"\r\n")


def shopper_key(raw: bytes) -> tuple[bytes | None, float | None]:
    """The message key (shopper id) and event time of a raw event, when it parses."""
    try:
        event = parse_event(raw)
    except InvalidEvent:
        return None, None
    return event.shopper_id.encode(), event.timestamp


async def replay(lines: Iterable[bytes], bootstrap_servers: str, topic: str, speed: float = 0.0) -> ReplayReport:
    """Send each line; with `speed` > 0 keep the events' timing, `speed` times faster."""
    report = ReplayReport()
    started = time.perf_counter()
    first_event_time: float | None = None
    client = producer(bootstrap_servers)
    await client.start()
    try:
        pending = []
        for raw in lines:
            key, event_time = shopper_key(raw)
            if key is None:
                report.invalid += 1
            elif speed > 0 and event_time is not None:
                first_event_time = event_time if first_event_time is None else first_event_time
                due = (event_time - first_event_time) / speed - (time.perf_counter() - started)
                if due > 0:
                    await asyncio.sleep(due)
            pending.append(await client.send(topic, raw, key=key))
            report.sent += 1
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await client.stop()
    report.seconds = time.perf_counter() - started
    return report


def dumps_lines(records: Iterable[dict]) -> Iterator[bytes]:
    return (orjson.dumps(record) for record in records)
