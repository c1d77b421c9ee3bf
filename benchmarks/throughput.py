"""Events per second per worker, side by side, in one run on one broker.

    python benchmarks/throughput.py [--events 60000] [--broker-url kafka://host:port]

Stages, all reading the same simulated events from the same topic:
  raw aiokafka    consume and parse with orjson, nothing else: the ceiling for any consumer
  faust agent     a plain Faust agent iterating its stream and doing nothing: Faust's own cost
  faust batches   the same agent taking micro-batches with `take_events`, as our worker does
  tuned batches   the same on our transport (`intent.transport`: fetch wait, delivery fast path)
  detector        the real worker (`intent.app.create_worker`): parse, windows in changelogged
                  tables, ONNX inference per micro-batch, shift detection, IntentChanged out
Rates are measured from a stage's first event to its last, so Faust's consumer-group join (about
30 s on the embedded broker) is reported apart. Ends with one JSON line of the headline figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import faust
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from intent.app import create_worker, faust_settings
from intent.broker import EmbeddedBroker, free_port
from intent.events import parse_event
from intent.kafka import ensure_topics, producer
from intent.model import IntentModel
from intent.settings import Settings
from intent.simulate import Simulator, coffee_tea_cold_story
from intent.transport import IntentApp

PARTITIONS = 4


@dataclass
class StageResult:
    name: str
    events: int
    seconds: float
    startup_seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def simulated_events(count: int, seed: int) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of the first `count` events of simulated shoppers, interleaved by time."""
    simulator = Simulator(seed=seed)
    shoppers = [coffee_tea_cold_story(simulator.world)]
    size = max(1, count // 40)
    while sum(len(shopper.events) for shopper in shoppers) < count:
        shoppers = [shoppers[0], *simulator.shoppers(size)]
        size *= 2
    events = sorted((event for shopper in shoppers for event in shopper.events), key=lambda e: e["timestamp"])
    return [((event.get("userId") or event["anonymousId"]).encode(), orjson.dumps(event)) for event in events[:count]]


async def produce(bootstrap_servers: str, topic: str, events: list[tuple[bytes, bytes]]) -> float:
    client = producer(bootstrap_servers)
    await client.start()
    started = time.perf_counter()
    try:
        pending = [await client.send(topic, value, key=key) for key, value in events]
        await asyncio.gather(*pending)
    finally:
        await client.stop()
    return time.perf_counter() - started


async def raw_aiokafka(bootstrap_servers: str, topic: str, count: int) -> StageResult:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    seen, first = 0, None
    try:
        while seen < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for messages in batches.values():
                for message in messages:
                    parse_event(message.value)
                first = first or time.perf_counter()
                seen += len(messages)
    finally:
        await consumer.stop()
    return StageResult("raw aiokafka (consume + parse)", seen, time.perf_counter() - first, 0.0)


async def run_faust_app(
    app: faust.App, count: int, progress: Callable[[], int], on_start: Callable[[], Awaitable[None]] | None = None
) -> tuple[float, float]:
    """Start `app` in this process, wait until `progress()` reaches `count`; (startup, run) seconds."""
    started = time.perf_counter()
    await app.start()
    if on_start is not None:
        await on_start()
    first = None
    while progress() < count:
        if first is None and progress() > 0:
            first = time.perf_counter()
        await asyncio.sleep(0.01)
        if time.perf_counter() - started > 900:
            raise TimeoutError(f"{app.conf.id}: {progress()} of {count} events after 900 s")
    finished = time.perf_counter()
    await app.stop()
    first = first or finished
    return first - started, finished - first


def plain_faust_app(
    url: str, topic_name: str, batched: bool, settings: Settings, tuned: bool = False
) -> tuple[faust.App, list[int]]:
    app_id = f"bench-faust-{'batches' if batched else 'agent'}-{uuid.uuid4().hex[:6]}"
    conf = {**faust_settings(settings), "broker": url, "web_enabled": False}
    app = (
        IntentApp(app_id, fetch_max_wait_seconds=settings.fetch_max_wait_seconds, **conf)
        if tuned
        else faust.App(app_id, **conf)
    )
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes)
    seen = [0]

    if batched:

        @app.agent(topic)
        async def passthrough(stream: faust.StreamT) -> None:
            async for batch in stream.take_events(settings.batch_max_events, settings.batch_max_seconds):
                seen[0] += len(batch)

    else:

        @app.agent(topic)
        async def passthrough(stream: faust.StreamT) -> None:
            async for _ in stream:
                seen[0] += 1

    return app, seen


def inference_per_batch(model: IntentModel, sizes: tuple[int, ...] = (1, 16, 64, 256)) -> dict[int, float]:
    """Median milliseconds of one step-model call for a micro-batch of each size."""
    rng = np.random.default_rng(0)
    cardinalities = model.featurizer.cardinalities
    results = {}
    for size in sizes:
        features = np.stack([rng.integers(0, c, size) for c in cardinalities], axis=1).astype(np.int64)
        hidden = model.initial_hidden(size)
        timings = []
        for _ in range(200 if size <= 64 else 50):
            started = time.perf_counter()
            model.step(features, hidden)
            timings.append(time.perf_counter() - started)
        results[size] = statistics.median(timings) * 1000
    return results


async def benchmark(arguments: argparse.Namespace, bootstrap_servers: str) -> dict[str, float | None]:
    url = "kafka://" + bootstrap_servers.replace(",", ";")
    run_id = uuid.uuid4().hex[:6]
    topic = f"bench-{run_id}-shopper-events"
    base = Settings(
        broker_url=url,
        app_id=f"bench-{run_id}",
        events_topic=topic,
        changes_topic=f"bench-{run_id}-intent-changes",
        dead_letter_topic=f"bench-{run_id}-shopper-events-dlq",
        topic_partitions=PARTITIONS,
        web_port=free_port(),
        data_dir=Path(arguments.data_dir) / run_id,
    )
    base.data_dir.mkdir(parents=True, exist_ok=True)
    await ensure_topics(bootstrap_servers, [topic, base.changes_topic, base.dead_letter_topic], PARTITIONS)
    print(f"simulating {arguments.events:,} events ...", flush=True)
    events = simulated_events(arguments.events, seed=arguments.seed)
    seconds = await produce(bootstrap_servers, topic, events)
    print(f"produced {len(events):,} events to {topic} in {seconds:.1f} s", flush=True)
    count = len(events)

    results = {"raw": await raw_aiokafka(bootstrap_servers, topic, count)}
    print(f"  {results['raw'].name}: {results['raw'].rate:,.0f} events/s", flush=True)
    passthrough_stages = (
        ("agent", "faust agent, per event (pass-through)", False, False),
        ("batches", "faust agent, take_events (pass-through)", True, False),
        ("tuned", "same, on intent.transport (pass-through)", True, True),
    )
    for key, name, batched, tuned in passthrough_stages if not arguments.detector_only else ():
        app, seen = plain_faust_app(url, topic, batched, base, tuned)
        startup, run = await run_faust_app(app, count, lambda seen=seen: seen[0])
        results[key] = StageResult(name, count, run, startup)
        print(f"  {name}: {results[key].rate:,.0f} events/s", flush=True)

    worker = create_worker(base)
    startup, run = await run_faust_app(worker.app, count, lambda: worker.tracker.stats.events)
    results["detector"] = StageResult("detector (window + inference + detection)", count, run, startup)
    print(f"  {results['detector'].name}: {results['detector'].rate:,.0f} events/s", flush=True)

    stats = worker.tracker.stats
    session_sizes = [len(value) for value in worker.sessions.data.values()]
    shopper_sizes = [len(value) for value in worker.shoppers.data.values()]
    per_batch = inference_per_batch(worker.tracker.model)

    print()
    print(f"{'stage':<45}{'events/s':>12}{'vs raw':>9}{'startup s':>11}")
    for result in results.values():
        print(
            f"{result.name:<45}{result.rate:>12,.0f}{result.rate / results['raw'].rate:>9.1%}"
            f"{result.startup_seconds:>11.1f}"
        )
    print()
    print(
        f"detector: {stats.events:,} events in {stats.batches:,} micro-batches "
        f"(mean {stats.events / max(1, stats.batches):.0f} events), {stats.model_calls:,} model calls, "
        f"{stats.intent_changes:,} intent changes"
    )
    print(
        f"detector: onnxruntime {stats.model_seconds * 1000 / max(1, stats.batches):.2f} ms per micro-batch, "
        f"{stats.model_seconds / run:.0%} of the run"
    )
    print(
        "step model, one call: "
        + ", ".join(f"batch {size}: {ms:.3f} ms ({ms * 1000 / size:.1f} µs/event)" for size, ms in per_batch.items())
    )
    print(
        f"state: {len(session_sizes):,} session windows, mean {statistics.fmean(session_sizes):,.0f} bytes; "
        f"{len(shopper_sizes):,} shopper windows, mean {statistics.fmean(shopper_sizes):,.0f} bytes"
    )
    return {
        "events": count,
        "raw_events_per_s": round(results["raw"].rate),
        "passthrough_events_per_s": round(results["agent"].rate) if "agent" in results else None,
        "passthrough_batched_events_per_s": round(results["batches"].rate) if "batches" in results else None,
        "passthrough_tuned_events_per_s": round(results["tuned"].rate) if "tuned" in results else None,
        "detector_events_per_s": round(results["detector"].rate),
        "faust_startup_seconds": round(results["detector"].startup_seconds, 1),
        "inference_ms_per_micro_batch": round(stats.model_seconds * 1000 / max(1, stats.batches), 3),
        "mean_micro_batch_events": round(stats.events / max(1, stats.batches), 1),
        "bytes_per_session": round(statistics.fmean(session_sizes)),
        "bytes_per_shopper": round(statistics.fmean(shopper_sizes)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--broker-url", help="a running Kafka (kafka://host:port); default: an embedded broker")
    parser.add_argument("--data-dir", default="runs/benchmark")
    parser.add_argument("--detector-only", action="store_true", help="skip the Faust pass-through stages (to profile)")
    arguments = parser.parse_args()
    if arguments.broker_url:
        figures = asyncio.run(benchmark(arguments, arguments.broker_url.split("://", 1)[-1].replace(";", ",")))
    else:
        with EmbeddedBroker(port=free_port()) as broker:
            figures = asyncio.run(benchmark(arguments, broker.bootstrap_servers))
    print(orjson.dumps(figures).decode())


if __name__ == "__main__":
    main()
