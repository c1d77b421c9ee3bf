"""`intent demo`: the whole product in one command, on the embedded broker.

Starts the broker (unless one listens already), a worker process, and sends simulated shoppers,
among them the coffee -> tea -> cold story and a few malformed events, then prints the intent
shifts and dead letters as they arrive and a summary, and shuts everything down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from intent.cli import broker_for
from intent.kafka import ensure_topics, wait_for_lag_zero
from intent.replay import replay
from intent.settings import Settings

MALFORMED = [
    b'{"event": "Product Viewed", "userId": "broken-1", "timestamp": "2026-01-28T11:00:00Z", "properties": {"price": "cheap"}}',
    b"this is not JSON",
    b'{"event": "Product Viewed", "timestamp": "2026-01-28T11:00:00Z"}',
]


def demo_events(shoppers: int) -> list[bytes]:
    from training.simulate import Simulator, coffee_tea_cold_story

    simulator = Simulator(seed=2026)
    people = [coffee_tea_cold_story(simulator.world), *simulator.shoppers(shoppers)]
    events = sorted(
        (event for person in people for event in person.events), key=lambda e: e["timestamp"]
    )
    lines = [orjson.dumps(event) for event in events]
    # The malformed events go in among the good ones: the good ones around them must still count.
    for position, raw in zip((len(lines) // 4, len(lines) // 2, 3 * len(lines) // 4), MALFORMED, strict=True):
        lines.insert(position, raw)
    return lines


def describe(change: dict[str, Any]) -> str:
    source = change["from_intent"]["id"] if change["from_intent"] else "(no intent)"
    trigger = next(
        (e.get("name") or e.get("query") or e["event"] for e in reversed(change["evidence"])), ""
    )
    return (
        f"  shift  {change['shopper_id']:<24} {source:>17} -> {change['to_intent']['id']:<17} "
        f"{change['to_intent']['confidence']:.2f}  after {trigger!r} ({change['event_time'][:16]})"
    )


async def _run(settings: Settings, shoppers: int, timeout: float) -> int:
    run_id = uuid.uuid4().hex[:8]
    app_id = f"intent-demo-{run_id}"
    topics = {
        "INTENT_EVENTS_TOPIC": f"demo-{run_id}-shopper-events",
        "INTENT_CHANGES_TOPIC": f"demo-{run_id}-intent-changes",
        "INTENT_DEAD_LETTER_TOPIC": f"demo-{run_id}-shopper-events-dlq",
    }
    bootstrap = settings.bootstrap_servers
    await ensure_topics(bootstrap, topics.values(), settings.topic_partitions)
    lines = demo_events(shoppers)
    print(f"intent demo: {len(lines):,} events from {shoppers + 1} shoppers "
          f"(the coffee -> tea -> cold story among them) on {bootstrap}")

    with tempfile.TemporaryDirectory(prefix="intent-demo-") as data_dir:
        environment = {
            **os.environ,
            **topics,
            "INTENT_BROKER_URL": f"kafka://{bootstrap}",
            "INTENT_APP_ID": app_id,
            "INTENT_DATA_DIR": data_dir,
            "INTENT_LOG_LEVEL": "ERROR",  # the demo prints what matters itself
        }
        worker = subprocess.Popen([sys.executable, "-m", "intent", "worker"], env=environment)
        changes: list[dict[str, Any]] = []
        dead_letters: list[dict[str, Any]] = []
        consumer = AIOKafkaConsumer(
            topics["INTENT_CHANGES_TOPIC"], topics["INTENT_DEAD_LETTER_TOPIC"],
            bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
        )
        await consumer.start()

        async def watch() -> None:
            async for message in consumer:
                record = orjson.loads(message.value)
                if message.topic == topics["INTENT_CHANGES_TOPIC"]:
                    changes.append(record)
                    print(describe(record), flush=True)
                else:
                    dead_letters.append(record)
                    print(f"  dead letter  offset {record['offset']}: {record['reason']}", flush=True)

        watcher = asyncio.create_task(watch())
        started = time.perf_counter()
        try:
            report = await replay(lines, bootstrap, topics["INTENT_EVENTS_TOPIC"])
            print(f"sent {report.sent:,} events; the worker joins its group and catches up ...", flush=True)
            await wait_for_lag_zero(bootstrap, app_id, topics["INTENT_EVENTS_TOPIC"], timeout)
            await asyncio.sleep(1.0)  # the last outputs are on their way to us
        except TimeoutError as error:
            print(f"demo failed: {error}")
            return 1
        finally:
            watcher.cancel()
            await consumer.stop()
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        elapsed = time.perf_counter() - started

    story = [c for c in changes if c["shopper_id"] == "story-coffee-tea-cold"]
    cold = next((c for c in story if c["to_intent"]["id"] == "cold_flu_care"), None)
    by_intent = Counter(c["to_intent"]["id"] for c in changes)
    print("\nsummary")
    print(f"  events processed      {report.sent - len(dead_letters):,} of {report.sent:,} in {elapsed:.1f} s")
    print(f"  dead-lettered         {len(dead_letters)} (malformed on purpose: {len(MALFORMED)})")
    print(f"  intent shifts         {len(changes)}: " + ", ".join(f"{k} {v}" for k, v in by_intent.most_common()))
    if cold:
        print(f"  the story             coffee_ritual -> cold_flu_care detected at {cold['event_time']} "
              f"after {cold['evidence'][-1].get('name') or cold['evidence'][-1].get('query')!r}")
    else:
        print("  the story             the cold & flu shift was NOT detected")
    return 0 if cold and len(dead_letters) == len(MALFORMED) else 1


def run_demo(settings: Settings, shoppers: int, timeout: float) -> int:
    logging.getLogger().setLevel(logging.WARNING)  # the live log is ours; keep library chatter out
    with broker_for(settings):
        return asyncio.run(_run(settings, shoppers, timeout))
