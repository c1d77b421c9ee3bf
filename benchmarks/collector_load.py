"""Load test of the collector on the embedded broker: accepted rate, call latency, nothing lost.

    python benchmarks/collector_load.py [--rates 1000,3000] [--seconds 20] [--modes batch,single]

For each mode and target rate, a collector (`intent collector`, its own process, as deployed) is
started on a fresh events topic, and the simulator's shoppers' events are sent to it on a fixed
schedule (open loop: a slow answer does not delay the next call), either as Segment `batch` calls
of 20 events or as one `track` call per event. A call's latency runs from its scheduled start to
its answer, so time spent waiting for a connection counts. Then the topic is read to its end to
show that every accepted event is on it, once. The baseline is the same events produced straight to
a topic with aiokafka: the most the broker takes from one Python process. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from intent.broker import EmbeddedBroker, free_port
from intent.kafka import ensure_topics, producer
from intent.loadgen import LoadReport, send_load, simulated_messages
from intent.settings import REPO_DIR

WRITE_KEY = "load-test"
BATCH_SIZE = 20
PARTITIONS = 4


@dataclass
class Run:
    mode: str
    target: float
    load: LoadReport = field(default_factory=LoadReport)
    on_topic: int = 0
    distinct_on_topic: int = 0
    collector_cpu_seconds: float = 0.0

    def row(self) -> dict[str, Any]:
        load = self.load
        cuts = statistics.quantiles(load.latencies, n=100, method="inclusive")
        return {
            "mode": self.mode,
            "target_events_per_s": round(self.target),
            "accepted_events_per_s": round(load.events_accepted / load.seconds),
            "calls_per_s": round(load.calls / load.seconds),
            "sent": load.events_sent,
            "accepted": load.events_accepted,
            "on_topic": self.on_topic,
            "lost": load.events_accepted - self.distinct_on_topic,
            "failed_calls": load.failed_calls,
            "p50_ms": round(cuts[49] * 1000, 1),
            "p99_ms": round(cuts[98] * 1000, 1),
            # the collector's own CPU time: its capacity per core, whatever else runs on the machine
            "collector_cpu_us_per_event": round(self.collector_cpu_seconds / load.events_accepted * 1e6),
        }


async def start_collector(broker: EmbeddedBroker, topic: str, port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "INTENT_BROKER_URL": broker.url,
        "INTENT_EVENTS_TOPIC": topic,
        "INTENT_IDENTITIES_TOPIC": f"{topic}-identities",
        "INTENT_TOPIC_PARTITIONS": str(PARTITIONS),
        "INTENT_WRITE_KEYS": WRITE_KEY,
        "INTENT_COLLECTOR_PORT": str(port),
        "INTENT_COLLECTOR_RATE_LIMIT_PER_SECOND": "0",  # the load is one write key: measure, do not limit
        "INTENT_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "intent", "collector"],
        env=environment,
        cwd=REPO_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the collector exited:\n{log.read().decode(errors='replace')[-3000:]}")
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return process
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    process.terminate()
    raise RuntimeError("the collector did not become ready in 30 s")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def count_on_topic(bootstrap_servers: str, topic: str) -> tuple[int, int]:
    """(records, distinct messageIds) on the topic, read to the end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    records, ids = 0, set()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        for partition in partitions:
            while await consumer.position(partition) < ends[partition]:
                for message in (await consumer.getmany(partition, timeout_ms=500)).get(partition, []):
                    records += 1
                    ids.add(orjson.loads(message.value)["messageId"])
    finally:
        await consumer.stop()
    return records, len(ids)


async def direct_produce_rate(bootstrap_servers: str, messages: list[dict[str, Any]]) -> float:
    topic = f"load-{uuid.uuid4().hex[:6]}-direct"
    await ensure_topics(bootstrap_servers, [topic], PARTITIONS)
    client = producer(bootstrap_servers)
    await client.start()
    try:
        values = [(orjson.dumps(m), (m.get("userId") or m.get("anonymousId") or "").encode()) for m in messages]
        started = time.perf_counter()
        await asyncio.gather(*[await client.send(topic, value, key=key) for value, key in values])
        return len(values) / (time.perf_counter() - started)
    finally:
        await client.stop()


async def run_all(arguments: argparse.Namespace, broker: EmbeddedBroker) -> dict[str, Any]:
    most = int(max(arguments.rates) * arguments.seconds)
    messages = list(islice(simulated_messages(arguments.shoppers, seed=3), most))
    runs = []
    for mode in arguments.modes:
        for rate in arguments.rates:
            run = Run(mode, rate)
            topic = f"load-{mode}-{uuid.uuid4().hex[:6]}"
            port = free_port()
            with tempfile.TemporaryFile() as log:
                collector = await start_collector(broker, topic, port, log)
                try:
                    cpu_before = cpu_seconds(collector.pid)
                    run.load = await send_load(
                        f"http://127.0.0.1:{port}",
                        WRITE_KEY,
                        messages[: int(rate * arguments.seconds)],
                        rate,
                        BATCH_SIZE if mode == "batch" else None,
                    )
                    run.collector_cpu_seconds = cpu_seconds(collector.pid) - cpu_before
                finally:
                    collector.terminate()  # SIGTERM: it drains and flushes, as in a deployment
                    collector.wait(30)
            run.on_topic, run.distinct_on_topic = await count_on_topic(broker.bootstrap_servers, topic)
            runs.append(run)
            print(f"  {mode} at {rate:,.0f} events/s done", file=sys.stderr, flush=True)
    direct = await direct_produce_rate(broker.bootstrap_servers, messages[:20_000])
    rows = [run.row() for run in runs]
    print(
        f"{'mode':>7}{'target ev/s':>13}{'accepted ev/s':>15}{'calls/s':>9}{'sent':>9}{'accepted':>10}"
        f"{'on topic':>10}{'lost':>6}{'failed calls':>14}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/event':>14}"
    )
    for row in rows:
        print(
            f"{row['mode']:>7}{row['target_events_per_s']:>13,}{row['accepted_events_per_s']:>15,}"
            f"{row['calls_per_s']:>9,}{row['sent']:>9,}{row['accepted']:>10,}{row['on_topic']:>10,}"
            f"{row['lost']:>6}{row['failed_calls']:>14}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}"
            f"{row['collector_cpu_us_per_event']:>14,}"
        )
    print(f"{'baseline':>7}{'':>13}{direct:>15,.0f}  events/s produced straight to a topic with aiokafka")
    return {"runs": rows, "direct_produce_events_per_s": round(direct)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=lambda text: [float(r) for r in text.split(",")], default=[1000.0, 3000.0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each run")
    parser.add_argument("--modes", type=lambda text: text.split(","), default=["batch", "single"])
    parser.add_argument("--shoppers", type=int, default=2000, help="simulated shoppers behind the events")
    arguments = parser.parse_args()
    print(f"$ python benchmarks/collector_load.py {' '.join(sys.argv[1:])}", flush=True)
    # the load generator shares the machine with the collector and the broker: say how busy it was
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    with EmbeddedBroker(port=free_port()) as broker:
        figures = asyncio.run(run_all(arguments, broker))
    print(orjson.dumps(figures).decode())


if __name__ == "__main__":
    main()
