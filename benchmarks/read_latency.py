"""Latency of the read API under load, next to the worker's `/healthz` in the same run.

    python benchmarks/read_latency.py [--rate 1000] [--seconds 60] [--reads-per-second 60]

Starts an embedded broker and two `intent worker` processes in one group (4 partitions, two each),
sends simulated shoppers' events at `--rate` events/s, and meanwhile asks worker A, in turn:
  /healthz                                 the baseline: the same web server, no shopper's data
  /v1/shoppers/{id}/intent, local          a known shopper whose partition worker A owns
  /v1/shoppers/{id}/intent, routed         a known shopper whose partition worker B owns (A forwards)
one request at a time, `--reads-per-second` in all, on one kept-alive connection. Prints p50/p90/p99
side by side (target: the local read's p99 within 3 x /healthz's p99) and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import simulated_events
from benchmarks.webhook_latency import percentiles
from intent.broker import EmbeddedBroker, free_port
from intent.erasure import partition_of
from intent.kafka import ensure_topics, producer
from intent.settings import REPO_DIR

TOKEN = "benchmark"
PARTITIONS = 4
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def partitions_of(http: aiohttp.ClientSession, port: int) -> list[int]:
    """The worker's partitions, from its /status ([] while it does not answer)."""
    try:
        async with http.get(f"http://127.0.0.1:{port}/status") as response:
            return [int(partition) for partition in (await response.json())["partitions"]]
    except aiohttp.ClientError:
        return []


async def send_events(bootstrap: str, topic: str, events: list[tuple[bytes, bytes]], rate: float) -> float:
    """Send at `rate` events/s; returns the rate achieved."""
    client = producer(bootstrap)
    await client.start()
    try:
        started = time.perf_counter()
        for number, (key, value) in enumerate(events):
            delay = started + number / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await client.send(topic, value, key=key)
        await client.flush()
        return len(events) / (time.perf_counter() - started)
    finally:
        await client.stop()


async def timed_get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, float]:
    started = time.perf_counter()
    async with http.get(url, headers=headers) as response:
        await response.read()
        return response.status, time.perf_counter() - started


async def run(arguments: argparse.Namespace, broker: EmbeddedBroker) -> dict[str, object]:
    bootstrap = broker.bootstrap_servers
    run_id = uuid.uuid4().hex[:6]
    app_id = f"read-latency-{run_id}"
    topics = {name: f"{app_id}-{name}" for name in ("events", "changes", "dlq", "webhooks-dlq", "subs")}
    await ensure_topics(bootstrap, [topics["events"], topics["changes"], topics["dlq"], topics["webhooks-dlq"]], 4)
    ports = [free_port(), free_port()]
    workers = []
    for number, port in enumerate(ports):
        environment = {
            **os.environ,
            "INTENT_BROKER_URL": broker.url,
            "INTENT_APP_ID": app_id,
            "INTENT_EVENTS_TOPIC": topics["events"],
            "INTENT_CHANGES_TOPIC": topics["changes"],
            "INTENT_DEAD_LETTER_TOPIC": topics["dlq"],
            "INTENT_WEBHOOK_DEAD_LETTER_TOPIC": topics["webhooks-dlq"],
            "INTENT_SUBSCRIPTIONS_TOPIC": topics["subs"],
            "INTENT_ERASURES_TOPIC": f"{app_id}-erasures",
            "INTENT_IDENTITIES_TOPIC": f"{app_id}-identities",
            "INTENT_TOPIC_PARTITIONS": str(PARTITIONS),
            "INTENT_WEB_PORT": str(port),
            "INTENT_DATA_DIR": f"runs/read-latency/{run_id}/worker-{number}",
            "INTENT_AUDIT_LOG_PATH": f"runs/read-latency/{run_id}/audit-{number}.jsonl",
            "INTENT_API_TOKENS": TOKEN,
            "INTENT_HOLDOUT_SHARE": "0",
            "INTENT_LOG_LEVEL": "WARNING",
            "INTENT_GROUP_SESSION_TIMEOUT_SECONDS": "10",
        }
        workers.append(subprocess.Popen([sys.executable, "-m", "intent", "worker"], env=environment, cwd=REPO_DIR))
    base = f"http://127.0.0.1:{ports[0]}"
    try:
        connector = aiohttp.TCPConnector(limit=1)  # one kept-alive connection: no connection setup measured
        async with aiohttp.ClientSession(connector=connector) as http:
            print("waiting for the two workers to join and split the partitions ...", flush=True)
            async with asyncio.timeout(240):
                while True:
                    owned = [await partitions_of(http, port) for port in ports]
                    if owned[0] and owned[1] and sorted(owned[0] + owned[1]) == list(range(PARTITIONS)):
                        break
                    await asyncio.sleep(1)
            count = int(arguments.rate * arguments.seconds)
            events = simulated_events(count, seed=arguments.seed)
            # two known shoppers with events early in the stream, one on each worker's partitions
            known = [key.decode() for key, value in events[: count // 20] if b'"userId"' in value]
            local = next(shopper for shopper in known if partition_of(shopper, PARTITIONS) in owned[0])
            routed = next(shopper for shopper in known if partition_of(shopper, PARTITIONS) in owned[1])
            print(f"sending {count:,} events at {arguments.rate:,.0f}/s; local {local}, routed {routed}", flush=True)
            sending = asyncio.create_task(send_events(bootstrap, topics["events"], events, arguments.rate))
            targets = {
                "/healthz": (f"{base}/healthz", {}),
                "intent, local shopper": (f"{base}/v1/shoppers/{local}/intent", AUTH),
                "intent, routed shopper": (f"{base}/v1/shoppers/{routed}/intent", AUTH),
            }
            async with asyncio.timeout(120):  # both shoppers' first events are processed
                while [(await timed_get(http, url, headers))[0] for url, headers in targets.values()] != [200] * 3:
                    await asyncio.sleep(0.2)
            await asyncio.sleep(arguments.warmup)
            samples: dict[str, list[float]] = {name: [] for name in targets}
            failures: dict[str, int] = dict.fromkeys(targets, 0)
            interval = 1.0 / arguments.reads_per_second
            started = time.perf_counter()
            number = 0
            while not sending.done():
                name = list(targets)[number % len(targets)]
                url, headers = targets[name]
                status_code, seconds = await timed_get(http, url, headers)
                if status_code == 200:
                    samples[name].append(seconds)
                else:
                    failures[name] += 1
                number += 1
                delay = started + number * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            achieved = await sending
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)

    rows = {name: percentiles(values) for name, values in samples.items()}
    healthz_p99 = rows["/healthz"]["p99_ms"]
    local_p99 = rows["intent, local shopper"]["p99_ms"]
    print()
    print(f"input rate achieved: {achieved:,.0f} events/s over {count:,} events, two workers")
    print(f"{'request to worker A':<26}{'count':>8}{'failed':>8}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}")
    for name, figures in rows.items():
        print(
            f"{name:<26}{figures['count']:>8,}{failures[name]:>8}"
            f"{figures['p50_ms']:>10.2f}{figures['p90_ms']:>10.2f}{figures['p99_ms']:>10.2f}"
        )
    ratio = local_p99 / healthz_p99
    print(f"local intent p99 / healthz p99 = {ratio:.2f} (target <= 3)")
    keys = {"/healthz": "healthz", "intent, local shopper": "local", "intent, routed shopper": "routed"}
    return {
        "rate": round(achieved),
        "events": count,
        **{
            f"{keys[name]}_{stat}": round(value, 2) if stat != "count" else value
            for name, figures in rows.items()
            for stat, value in figures.items()
        },
        "failed": sum(failures.values()),
        "local_p99_over_healthz_p99": round(ratio, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to send")
    parser.add_argument("--reads-per-second", type=float, default=60.0, help="requests per second, all kinds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds between the first answers and measuring")
    parser.add_argument("--seed", type=int, default=5)
    arguments = parser.parse_args()
    with EmbeddedBroker(port=free_port()) as broker:
        figures = asyncio.run(run(arguments, broker))
    print(orjson.dumps(figures).decode())


if __name__ == "__main__":
    main()
