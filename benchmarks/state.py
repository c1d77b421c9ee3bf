"""State per known shopper, and state that outgrows memory, side by side in one run.

    python benchmarks/state.py [--shoppers 100000] [--window-shoppers 200] [--broker-url kafka://host:port]

1. `bytes_per_shopper`: the stored window of a known shopper whose window is full under the default
   policy (200 events within 7 days), p50 and p99 over simulated frequent shoppers, beside the same
   windows as the previous version stored them (format 1: a JSON line per event, every field), and
   what storing and reading one costs in each format. The default simulated shopper (12 visits over
   about 18 days) never fills a window, so these shoppers visit 40 times in about 5 days.
   `measure_bytes_per_shopper()` is the function other benchmarks call.
2. For `--shoppers` known shoppers, seeded straight into the changelog topics (a full window and a
   visit each, cycled from the windows of 1.): `intent worker` processes on memory and on RocksDB
   (`INTENT_STATE_STORE`), each started, given one event, stopped and started again; measured are
   the time from the restart to its first processed event, the changelog records its recovery read,
   and its resident memory (RSS) then, beside a worker with no state at all.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka.partitioner import DefaultPartitioner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from intent.broker import EmbeddedBroker, free_port
from intent.events import ShopperEvent, event_from_dict, iso_time
from intent.kafka import ensure_topics, producer
from intent.model import IntentModel
from intent.settings import REPO_DIR, Settings
from intent.simulate import Regime, Simulator
from intent.stores import DictStore
from intent.tracking import IntentTracker
from intent.window import Window, WindowPolicy

PARTITIONS = 4
FREQUENT_SHOPPERS = Regime(mean_sessions=40, mean_days_between_sessions=0.12, anonymous_share=0.0)
# the fields the previous version kept of every event (format 1), under its short keys
FORMAT_1_KEYS = {
    "message_id": "m",
    "event_type": "e",
    "timestamp": "t",
    "product_id": "p",
    "product_name": "pn",
    "category": "c",
    "brand": "b",
    "price": "pr",
    "query": "qy",
    "products": "ps",
    "device": "d",
    "channel": "ch",
    "timezone": "tz",
    "segment": "sg",
}


def full_windows(shoppers: int, seed: int) -> list[tuple[Window, list[ShopperEvent]]]:
    """Each simulated frequent shopper's window once all her events are in, with the events it
    holds, for those whose window is full (as many events as the default policy keeps)."""
    policy = WindowPolicy()
    people = Simulator(seed=seed, regime=FREQUENT_SHOPPERS).shoppers(shoppers)
    events = [event_from_dict(e) for e in sorted((e for p in people for e in p.events), key=lambda e: e["timestamp"])]
    shoppers_store = DictStore()
    tracker = IntentTracker(IntentModel.load(Settings().model_dir), policy, DictStore(), shoppers_store)
    for start in range(0, len(events), 500):
        tracker.process(events[start : start + 500])
        tracker.save()
    by_shopper: dict[str, list[ShopperEvent]] = {}
    for event in events:
        by_shopper.setdefault(event.shopper_id, []).append(event)
    windows = []
    for key, raw in shoppers_store.data.items():
        window = Window.from_bytes(raw)
        if len(window.events) == policy.shopper_events:
            windows.append((window, by_shopper[key][-policy.shopper_events :]))
    return windows


def format_1_bytes(window: Window, events: list[ShopperEvent]) -> bytes:
    """`window` as the previous version stored it: a JSON header line, then a JSON line per event."""
    header = [
        window.session_id,
        None if window.hidden is None else base64.b64encode(window.hidden).decode(),
        window.detector,
        window.model_version,
        window.last_event_time,
        window.last_seen,
        window.partition,
        window.last_offset,
        window.purchases,
        window.personalization_allowed,
    ]
    lines = [
        orjson.dumps(
            {short: getattr(e, long) for long, short in FORMAT_1_KEYS.items() if getattr(e, long) not in (None, ())}
        )
        for e in events
    ]
    return b"\n".join([orjson.dumps(header), *lines])


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[round(share * (len(ordered) - 1))]


def measure_bytes_per_shopper(shoppers: int = 200, seed: int = 5) -> dict[str, float]:
    """`bytes_per_shopper` (p50) and its p99 over the full windows of `shoppers` simulated frequent
    shoppers, the same for format 1, and the microseconds to store and to read one (format 1: split
    and join its lines)."""
    return window_figures(full_windows(shoppers, seed))


def window_figures(windows: list[tuple[Window, list[ShopperEvent]]]) -> dict[str, float]:
    stored = [window.to_bytes() for window, _ in windows]
    before = [format_1_bytes(window, events) for window, events in windows]
    rows, old, repeats = windows[0][0].events, before[0], 200
    return {
        "full_windows": len(windows),
        "bytes_per_shopper": statistics.median(map(len, stored)),
        "bytes_per_shopper_p99": percentile([len(raw) for raw in stored], 0.99),
        "bytes_per_shopper_format_1": statistics.median(map(len, before)),
        "bytes_per_shopper_format_1_p99": percentile([len(raw) for raw in before], 0.99),
        "window_store_us": timeit.timeit(lambda: Window(events=rows).to_bytes(), number=repeats) / repeats * 1e6,
        "window_read_us": timeit.timeit(lambda: Window.from_bytes(stored[0]).events, number=repeats) / repeats * 1e6,
        "window_store_us_format_1": timeit.timeit(lambda: b"\n".join(old.split(b"\n")), number=repeats) / repeats * 1e6,
        "window_read_us_format_1": timeit.timeit(lambda: old.split(b"\n"), number=repeats) / repeats * 1e6,
    }


async def seed_changelogs(bootstrap: str, app_id: str, shoppers: int, windows: list[Window]) -> tuple[int, float]:
    """A shopper window and a visit for each of `shoppers` known shoppers, written straight to the
    worker's changelog topics, on the partition of the shopper's id; returns (bytes, seconds)."""
    now = time.time()
    topics = {name: f"{app_id}-{name}-changelog" for name in ("shopper-windows", "session-windows")}
    await ensure_topics(bootstrap, topics.values(), PARTITIONS, {"cleanup.policy": "compact"})
    client = producer(bootstrap)
    await client.start()
    partitioner, partitions = DefaultPartitioner(), list(range(PARTITIONS))
    started, written = time.perf_counter(), 0
    try:
        pending = []
        for number in range(shoppers):
            shopper = f"bench-shopper-{number}"
            partition = partitioner(shopper.encode(), partitions, partitions)  # as the events' producer keys it
            window = Window.from_bytes(windows[number % len(windows)].to_bytes())
            window.last_seen, window.partition = now, partition  # seen just now: no sweep removes it
            visit = Window(session_id=f"{shopper}-visit", last_event_time=window.last_event_time, last_seen=now)
            visit.partition = partition
            for topic, key, value in (
                (topics["shopper-windows"], shopper, window.to_bytes()),
                (topics["session-windows"], f"{shopper}|{shopper}-visit", visit.to_bytes()),
            ):
                pending.append(await client.send(topic, value, key=orjson.dumps(key), partition=partition))
                written += len(value)
            if len(pending) >= 5_000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await client.stop()
    return written, time.perf_counter() - started


@dataclass
class WorkerStart:
    store: str
    seconds_to_first_event: float
    recovered_records: float
    rss_mb: float


class WorkerRuns:
    """`intent worker` processes of one app id on one broker, each started, given an event, measured."""

    def __init__(self, broker_url: str, app_id: str, root: Path) -> None:
        self.broker_url, self.app_id, self.root = broker_url, app_id, root
        self.events_sent = 0

    def environment(self, store: str, port: int) -> dict[str, str]:
        return {
            **os.environ,
            "INTENT_BROKER_URL": self.broker_url,
            "INTENT_APP_ID": self.app_id,
            "INTENT_EVENTS_TOPIC": f"{self.app_id}-shopper-events",
            "INTENT_CHANGES_TOPIC": f"{self.app_id}-intent-changes",
            "INTENT_DEAD_LETTER_TOPIC": f"{self.app_id}-shopper-events-dlq",
            "INTENT_SUBSCRIPTIONS_TOPIC": f"{self.app_id}-subscriptions",
            "INTENT_WEBHOOK_DEAD_LETTER_TOPIC": f"{self.app_id}-webhooks-dlq",
            "INTENT_ERASURES_TOPIC": f"{self.app_id}-erasures",
            "INTENT_IDENTITIES_TOPIC": f"{self.app_id}-identities",
            "INTENT_TOPIC_PARTITIONS": str(PARTITIONS),
            "INTENT_WEB_PORT": str(port),
            "INTENT_DATA_DIR": str(self.root / store),
            "INTENT_STATE_STORE": store,
            "INTENT_EXPIRY_CHECK_SECONDS": "3600",  # no sweep during the measurement
            "INTENT_GROUP_SESSION_TIMEOUT_SECONDS": "10",  # the embedded broker holds a join for half of it
            "INTENT_LOG_LEVEL": "WARNING",
        }

    async def start_and_measure(self, store: str) -> WorkerStart:
        """Send one event, start a worker, and wait until it has processed it; stop it afterwards."""
        bootstrap = self.broker_url.split("://", 1)[-1]
        await self.send_event(bootstrap)
        port = free_port()
        log = (self.root / f"{store}-{self.events_sent}.log").open("wb")
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "intent", "worker"],
            env=self.environment(store, port),
            cwd=REPO_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
                while await metric(http, "intent_events_in_total") < 1:
                    if process.poll() is not None:
                        raise RuntimeError(f"the {store} worker stopped: see {log.name}")
                    if time.perf_counter() - started > 1800:
                        raise TimeoutError(f"the {store} worker processed nothing in 1800 s: see {log.name}")
                    await asyncio.sleep(0.05)
                seconds = time.perf_counter() - started
                recovered = await metric(http, "intent_state_recovered_records_total")
            return WorkerStart(store, seconds, recovered, resident_mb(process.pid))
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()

    async def send_event(self, bootstrap: str) -> None:
        self.events_sent += 1
        event = {
            "type": "track",
            "event": "Product Viewed",
            "userId": "bench-shopper-0",
            "messageId": f"bench-probe-{self.events_sent}",
            "timestamp": iso_time(time.time()),
            "properties": {"product_id": "P0001", "category": "coffee beans", "price": 7.5},
            "context": {"sessionId": "bench-shopper-0-visit"},
        }
        client = producer(bootstrap)
        await client.start()
        try:
            await (await client.send(f"{self.app_id}-shopper-events", orjson.dumps(event), key=b"bench-shopper-0"))
        finally:
            await client.stop()


async def metric(http: aiohttp.ClientSession, name: str) -> float:
    """A metric's sum over its labels; 0 while the worker's web server is not up yet."""
    try:
        async with http.get("/metrics") as response:
            text = await response.text()
    except aiohttp.ClientError:
        return 0.0
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def measure_restarts(broker_url: str, shoppers: int, windows: list[Window], root: Path) -> dict[str, Any]:
    bootstrap = broker_url.split("://", 1)[-1]
    empty = WorkerRuns(broker_url, f"bench-state-empty-{uuid.uuid4().hex[:6]}", root / "empty")
    seeded = WorkerRuns(broker_url, f"bench-state-{uuid.uuid4().hex[:6]}", root / "seeded")
    for runs in (empty, seeded):
        runs.root.mkdir(parents=True)
        await ensure_topics(bootstrap, [f"{runs.app_id}-shopper-events"], PARTITIONS)
    written, seconds = await seed_changelogs(bootstrap, seeded.app_id, shoppers, windows)
    print(f"seeded {shoppers:,} shoppers: {written / 1e6:,.0f} MB of windows in {seconds:.1f} s", flush=True)
    starts = {"empty": await empty.start_and_measure("memory")}
    for store in ("memory", "rocksdb"):
        first = await seeded.start_and_measure(store)  # on RocksDB: the disk is filled from the changelogs
        starts[store] = await seeded.start_and_measure(store)  # the restart
        print(
            f"{store}: first start {first.seconds_to_first_event:.1f} s ({first.recovered_records:,.0f} records "
            f"recovered), restart {starts[store].seconds_to_first_event:.1f} s "
            f"({starts[store].recovered_records:,.0f} recovered), RSS {starts[store].rss_mb:,.0f} MB",
            flush=True,
        )
    return {
        "seeded_shoppers": shoppers,
        "seeded_megabytes": round(written / 1e6),
        "restart_to_first_event_s_empty": round(starts["empty"].seconds_to_first_event, 1),
        "restart_to_first_event_s_memory": round(starts["memory"].seconds_to_first_event, 1),
        "restart_to_first_event_s_rocksdb": round(starts["rocksdb"].seconds_to_first_event, 1),
        "recovered_records_memory": round(starts["memory"].recovered_records),
        "recovered_records_rocksdb": round(starts["rocksdb"].recovered_records),
        "rss_mb_empty": round(starts["empty"].rss_mb),
        "rss_mb_memory": round(starts["memory"].rss_mb),
        "rss_mb_rocksdb": round(starts["rocksdb"].rss_mb),
        "rss_mb_per_1000_shoppers_memory": round(
            (starts["memory"].rss_mb - starts["empty"].rss_mb) * 1000 / shoppers, 2
        ),
        "rss_mb_per_1000_shoppers_rocksdb": round(
            (starts["rocksdb"].rss_mb - starts["empty"].rss_mb) * 1000 / shoppers, 2
        ),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shoppers", type=int, default=100_000, help="known shoppers seeded into the changelogs")
    parser.add_argument("--window-shoppers", type=int, default=200, help="simulated shoppers for bytes_per_shopper")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--broker-url", help="a running broker (kafka://host:port); default: an embedded one")
    arguments = parser.parse_args()

    simulated = full_windows(arguments.window_shoppers, arguments.seed)
    sizes = window_figures(simulated)
    print(
        f"full shopper windows ({sizes['full_windows']} frequent shoppers): p50 {sizes['bytes_per_shopper']:,.0f} B, "
        f"p99 {sizes['bytes_per_shopper_p99']:,.0f} B; as stored before (format 1): "
        f"p50 {sizes['bytes_per_shopper_format_1']:,.0f} B, p99 {sizes['bytes_per_shopper_format_1_p99']:,.0f} B; "
        f"store / read one: {sizes['window_store_us']:.0f} / {sizes['window_read_us']:.0f} us "
        f"(format 1: {sizes['window_store_us_format_1']:.0f} / {sizes['window_read_us_format_1']:.0f} us)",
        flush=True,
    )
    windows = [window for window, _ in simulated]
    root = Path(tempfile.mkdtemp(prefix="intent-state-bench-"))
    broker = None
    try:
        broker_url = arguments.broker_url
        if broker_url is None:
            broker = EmbeddedBroker(port=free_port(), log_path=root / "broker.log")
            broker.start()
            broker_url = broker.url
        restarts = await measure_restarts(broker_url, arguments.shoppers, windows, root)
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(root, ignore_errors=True)
    figures = {key: round(value, 1) if isinstance(value, float) else value for key, value in sizes.items()}
    print(orjson.dumps({**figures, **restarts}).decode())


if __name__ == "__main__":
    asyncio.run(main())
