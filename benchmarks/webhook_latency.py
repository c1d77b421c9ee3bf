"""Event-to-webhook latency at a steady input rate, next to the broker's own round trip, in one run.

    python benchmarks/webhook_latency.py [--rate 1000] [--seconds 60]

Starts an embedded broker, one `intent worker` process and a local webhook receiver subscribed to
every intent; sends simulated shoppers' events at `--rate` events/s, each stamped with its send time,
and measures, per intent change, the time from sending the event that triggered it to:
  broker round trip   the event itself read back by a plain consumer (the floor any pipeline pays)
  intent-changes      the IntentChanged record appearing on its topic (detection)
  webhook             the signed POST arriving at the receiver (detection + delivery)
Prints p50/p90/p99 side by side and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import simulated_events
from intent.broker import EmbeddedBroker, free_port
from intent.kafka import ensure_topics, producer
from intent.settings import REPO_DIR, Settings

TOKEN = "benchmark"


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0, "p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan")}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"count": len(values), "p50_ms": cuts[49] * 1000, "p90_ms": cuts[89] * 1000, "p99_ms": cuts[98] * 1000}


async def follow(bootstrap: str, topic: str, arrivals: dict[str, float], key: str, stop: asyncio.Event) -> None:
    """Record when each record of `topic` (from now on) is read, by `key` field; with the worker's
    fetch wait, so the broker round trip is the floor the worker's own consumer sees too."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="latest",
        fetch_max_wait_ms=round(Settings().fetch_max_wait_seconds * 1000),
    )
    await consumer.start()
    try:
        while not stop.is_set():
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                now = time.perf_counter()
                for message in messages:
                    record = orjson.loads(message.value)
                    arrivals.setdefault(record[key], now)
    finally:
        await consumer.stop()


async def run(arguments: argparse.Namespace, broker: EmbeddedBroker) -> dict[str, object]:
    bootstrap = broker.bootstrap_servers
    run_id = uuid.uuid4().hex[:6]
    topics = {name: f"latency-{run_id}-{name}" for name in ("events", "changes", "dlq", "webhooks-dlq", "subs")}
    await ensure_topics(bootstrap, [topics["events"], topics["changes"], topics["dlq"], topics["webhooks-dlq"]], 4)
    web_port = free_port()
    environment = {
        **os.environ,
        "INTENT_BROKER_URL": broker.url,
        "INTENT_APP_ID": f"latency-{run_id}",
        "INTENT_EVENTS_TOPIC": topics["events"],
        "INTENT_CHANGES_TOPIC": topics["changes"],
        "INTENT_DEAD_LETTER_TOPIC": topics["dlq"],
        "INTENT_WEBHOOK_DEAD_LETTER_TOPIC": topics["webhooks-dlq"],
        "INTENT_SUBSCRIPTIONS_TOPIC": topics["subs"],
        "INTENT_WEB_PORT": str(web_port),
        "INTENT_DATA_DIR": f"runs/latency/{run_id}",
        "INTENT_API_TOKENS": TOKEN,
        "INTENT_WEBHOOK_ALLOW_PRIVATE_URLS": "true",
        "INTENT_HOLDOUT_SHARE": "0",
        "INTENT_FREQUENCY_CAP_COUNT": "1000000",
        "INTENT_LOG_LEVEL": "WARNING",
    }
    worker = subprocess.Popen([sys.executable, "-m", "intent", "worker"], env=environment, cwd=REPO_DIR)

    webhook_arrivals: dict[str, float] = {}

    async def hook(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        webhook_arrivals.setdefault(body["trigger_message_id"], time.perf_counter())
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hooks", hook)
    runner = web.AppRunner(receiver)
    await runner.setup()
    receiver_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", receiver_port).start()
    try:
        print("waiting for the worker to join its group and serve its API ...", flush=True)
        async with asyncio.timeout(180), aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.post(
                        f"http://127.0.0.1:{web_port}/v1/subscriptions",
                        json={"url": f"http://127.0.0.1:{receiver_port}/hooks"},
                        headers={"Authorization": f"Bearer {TOKEN}"},
                    ) as response:
                        if response.status == 201:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(1)

        count = int(arguments.rate * arguments.seconds)
        events = simulated_events(count, seed=arguments.seed)
        sent: dict[str, float] = {}
        echoed: dict[str, float] = {}
        changes: dict[str, float] = {}
        stop = asyncio.Event()
        followers = [
            asyncio.create_task(follow(bootstrap, topics["events"], echoed, "messageId", stop)),
            asyncio.create_task(follow(bootstrap, topics["changes"], changes, "trigger_message_id", stop)),
        ]
        await asyncio.sleep(2)  # the followers are positioned at the end
        client = producer(bootstrap)
        await client.start()
        print(f"sending {count:,} events at {arguments.rate:,.0f}/s ...", flush=True)
        started = time.perf_counter()
        for number, (key, value) in enumerate(events):
            due = started + number / arguments.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            message_id = orjson.loads(value)["messageId"]
            sent[message_id] = time.perf_counter()
            await client.send(topics["events"], value, key=key)
        await client.flush()
        achieved = count / (time.perf_counter() - started)
        await asyncio.sleep(arguments.drain)
        stop.set()
        await asyncio.gather(*followers)
        await client.stop()
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        await runner.cleanup()

    triggers = [m for m in changes if m in sent]
    rows = {
        "broker round trip": percentiles([echoed[m] - sent[m] for m in echoed if m in sent]),
        "event -> intent-changes": percentiles([changes[m] - sent[m] for m in triggers]),
        "event -> webhook": percentiles([webhook_arrivals[m] - sent[m] for m in triggers if m in webhook_arrivals]),
    }
    print()
    print(
        f"input rate achieved: {achieved:,.0f} events/s over {count:,} events; "
        f"{len(triggers):,} intent changes, {len(webhook_arrivals):,} webhooks received"
    )
    print(f"{'latency':<26}{'count':>8}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}")
    for name, figures in rows.items():
        print(
            f"{name:<26}{figures['count']:>8,}{figures['p50_ms']:>10.1f}{figures['p90_ms']:>10.1f}{figures['p99_ms']:>10.1f}"
        )
    return {
        "rate": round(achieved),
        "events": count,
        "intent_changes": len(triggers),
        "webhooks": len(webhook_arrivals),
        **{
            f"{key}_{stat}": round(value, 1)
            for key, figures in (
                ("broker", rows["broker round trip"]),
                ("detection", rows["event -> intent-changes"]),
                ("webhook", rows["event -> webhook"]),
            )
            for stat, value in figures.items()
            if stat != "count"
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to send")
    parser.add_argument("--drain", type=float, default=10.0, help="seconds to wait for the last webhooks")
    parser.add_argument("--seed", type=int, default=5)
    arguments = parser.parse_args()
    with EmbeddedBroker(port=free_port()) as broker:
        figures = asyncio.run(run(arguments, broker))
    print(orjson.dumps(figures).decode())


if __name__ == "__main__":
    main()
