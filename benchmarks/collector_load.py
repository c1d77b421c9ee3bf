"""Load test of the collector on the embedded broker: accepted rate, call latency, nothing lost.

    python benchmarks/collector_load.py [--rates 1000,3000] [--seconds 20]

For each target rate, simulated shoppers' events go to a collector (in this process, on a real
socket) as Segment batch calls of 20 events, paced to the rate; then the events topic is counted to
show that every accepted event is on it. The baseline is the same events produced straight to the
topic with aiokafka: the most the collector could pass on. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from itertools import islice
from pathlib import Path

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import free_port
from intent.broker import EmbeddedBroker
from intent.collector import create_collector_app
from intent.kafka import ensure_topics, producer
from intent.loadgen import send_load, simulated_messages
from intent.settings import Settings

WRITE_KEY = "load-test"


async def count_on_topic(bootstrap: str, topic: str, expected: int) -> int:
    """Distinct messageIds on the topic, read back (waiting up to 30 s for `expected` of them)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    seen: set[str] = set()
    try:
        async with asyncio.timeout(30):
            while len(seen) < expected:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    seen.update(orjson.loads(m.value)["messageId"] for m in messages)
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return len(seen)


async def run(arguments: argparse.Namespace, broker: EmbeddedBroker) -> dict[str, object]:
    results: dict[str, object] = {}
    rows = []
    for rate in arguments.rates:
        topic = f"load-{uuid.uuid4().hex[:6]}"
        settings = Settings(
            broker_url=broker.url, events_topic=topic, identities_topic=f"{topic}-ids", write_keys=WRITE_KEY
        )
        await ensure_topics(broker.bootstrap_servers, [topic], 4)
        client = producer(broker.bootstrap_servers)
        await client.start()
        app, _ = create_collector_app(settings, client)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        count = int(rate * arguments.seconds)
        messages = islice(simulated_messages(2000, seed=3), count)
        report = await send_load(f"http://127.0.0.1:{port}", WRITE_KEY, messages, rate, limit=count)
        await runner.cleanup()
        await client.stop()
        on_topic = await count_on_topic(broker.bootstrap_servers, topic, report.events_accepted)
        cuts = statistics.quantiles(report.latencies, n=100, method="inclusive")
        row = {
            "target": rate,
            "accepted_per_s": report.events_accepted / report.seconds,
            "sent": report.events_sent,
            "accepted": report.events_accepted,
            "on_topic": on_topic,
            "failed_calls": report.failed_calls,
            "p50_ms": cuts[49] * 1000,
            "p99_ms": cuts[98] * 1000,
        }
        rows.append(row)
        results[f"rate_{int(rate)}"] = {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}

    # the baseline: the same events straight to the topic, as fast as aiokafka goes
    topic = f"load-{uuid.uuid4().hex[:6]}-direct"
    await ensure_topics(broker.bootstrap_servers, [topic], 4)
    client = producer(broker.bootstrap_servers)
    await client.start()
    events = [orjson.dumps(m) for m in islice(simulated_messages(2000, seed=3), 20_000)]
    started = time.perf_counter()
    await asyncio.gather(*[await client.send(topic, e) for e in events])
    direct = len(events) / (time.perf_counter() - started)
    await client.stop()
    results["direct_produce_per_s"] = round(direct)

    print(
        f"{'target ev/s':>12}{'accepted ev/s':>15}{'sent':>9}{'accepted':>10}{'on topic':>10}"
        f"{'failed calls':>14}{'p50 ms':>9}{'p99 ms':>9}"
    )
    for row in rows:
        print(
            f"{row['target']:>12,.0f}{row['accepted_per_s']:>15,.0f}{row['sent']:>9,}{row['accepted']:>10,}"
            f"{row['on_topic']:>10,}{row['failed_calls']:>14}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}"
        )
    print(f"{'baseline':>12}{direct:>15,.0f}  events/s produced straight to the topic with aiokafka")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=lambda text: [float(r) for r in text.split(",")], default=[1000.0, 3000.0])
    parser.add_argument("--seconds", type=float, default=20.0)
    arguments = parser.parse_args()
    with EmbeddedBroker(port=free_port()) as broker:
        figures = asyncio.run(run(arguments, broker))
    print(orjson.dumps(figures).decode())


if __name__ == "__main__":
    main()
