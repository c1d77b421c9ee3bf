"""10,000 fuzzed events, half through the collector and half straight onto the events topic, on a
real worker (issue 10, fault tests): nothing crashes, every valid event ends up in its shopper's
window as the offline tracker puts it, and every rejected one is rejected with its reason.

Each event is a valid one, or a valid one with one thing wrong; what must become of it on each
route (processed, or rejected by the collector or dead-lettered by the worker, with a reason that
names what is wrong) is part of what is generated. Hypothesis generates them, derandomized, so
every run sends the same events (dated from the time of the run).
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from intent.broker import free_port
from intent.events import EVENT_TYPES, event_from_dict
from intent.kafka import wait_for_lag_zero
from intent.model import IntentModel
from intent.settings import REPO_DIR, get_settings
from intent.stores import DictStore
from intent.tracking import IntentTracker
from intent.window import Window, WindowPolicy
from tests.integration.conftest import Deployment, read_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 10_000
PER_EXAMPLE = 50
COLLECTOR, DIRECT = "collector", "direct"
WRITE_KEY = "wk_fuzz"
MAX_EVENT_BYTES = 32_768  # the worker's and the collector's default limit of one event
JOIN_AND_CATCH_UP_SECONDS = 240.0


@dataclass(frozen=True)
class Fate:
    """What must become of an event: processed (`by` None), or rejected by the collector or
    dead-lettered by the worker (`by`) with a reason that contains `reason`."""

    by: str | None = None
    reason: str = ""


PROCESSED = Fate()


@dataclass
class Case:
    route: str
    kind: str  # "valid", or what is wrong with it
    message: Any  # the JSON value sent, as the offline tracker reads it
    raw: bytes  # the bytes sent
    fate: Fate
    shopper: str | None = None  # the key it is sent with (valid events: its shopper)


def on_collector(reason: str) -> Fate:
    return Fate(COLLECTOR, reason)


def on_worker(reason: str) -> Fate:
    return Fate("worker", reason)


def everywhere(reason: str) -> tuple[Fate, Fate]:
    """Rejected for `reason` on either route: by the collector, or dead-lettered by the worker."""
    return on_collector(reason), on_worker(reason)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# Strategies are built once (building one costs more than drawing from it).
texts = st.text(max_size=20)  # any Unicode, surrogates excepted (JSON cannot carry them alone)
int64s = st.integers(-(2**63), 2**64 - 1)  # the integers orjson writes
SHOPPERS = {
    route: st.one_of(
        st.integers(0, 199).map(lambda n, route=route: f"{route}-{n}"),
        st.integers(0, 49).map(lambda n, route=route: f"{route}-ünï-{n}-🛒"),
        st.integers(numbered, numbered + 49),  # platforms send numeric ids
    )
    for route, numbered in ((COLLECTOR, 10_000), (DIRECT, 20_000))  # each route has shoppers of its own
}
EVENT_NAMES = st.sampled_from(EVENT_TYPES) | st.text(min_size=1, max_size=30)
ZONES = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), None])
PROPERTIES = st.fixed_dictionaries(
    {},
    optional={
        "category": st.sampled_from(["Coffee Beans", "herbal tea", "  MINT TEA ", "Kräutertee", "🍵"]) | texts,
        "product_id": texts | st.integers(0, 10**6),
        "name": texts,
        "brand": texts,
        "price": st.floats(0, 1e6) | st.integers(0, 10**6),
        "quantity": st.integers(0, 100),
        "products": st.lists(st.fixed_dictionaries({"product_id": texts}), max_size=3),
        # fields the worker does not read, nested up to 200 deep
        "extra": st.integers(1, 200).map(lambda depth: orjson.loads(nested(depth))),
    },
)
CONTEXTS = st.fixed_dictionaries(
    {},
    optional={
        "sessionId": st.sampled_from(["s1", "s2", "séance-3"]),
        "device": st.fixed_dictionaries({"type": st.sampled_from(["Mobile", "desktop", "tablet"])}),
        "channel": st.sampled_from(["web", "app"]),
        "locale": texts,
        "timezone": texts,
        "traits": st.fixed_dictionaries({"segment": texts}),
        "consent": st.fixed_dictionaries(
            {"categoryPreferences": st.fixed_dictionaries({"personalization": st.booleans()})}
        ),
    },
)


@st.composite
def valid_event(draw: st.DrawFn, route: str, now: float) -> dict[str, Any]:
    shopper: str | int = draw(SHOPPERS[route])
    identity = draw(st.sampled_from(["userId", "anonymousId", "both"]))
    message: dict[str, Any] = {"event": draw(EVENT_NAMES)}
    if identity in ("userId", "both"):
        message["userId"] = shopper
    if identity == "anonymousId":
        message["anonymousId"] = shopper
    if identity == "both":
        message["anonymousId"] = f"anon-{draw(texts)}"
    if draw(st.integers(0, 19)):  # sometimes none: the collector or the worker fills one in
        message["messageId"] = "set when sent"
    seconds_ago = draw(st.floats(0, 600))
    zone = draw(ZONES)
    moment = datetime.fromtimestamp(now - seconds_ago, zone or UTC)
    message["timestamp"] = (moment.replace(tzinfo=None) if zone is None else moment).isoformat()
    message["properties"] = draw(PROPERTIES)
    if draw(st.booleans()):
        message["context"] = draw(CONTEXTS)
    return message


def mutated(message: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**message, **fields}


def without(message: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: value for name, value in message.items() if name not in names}


def with_properties(message: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**message, "properties": {**message["properties"], **fields}}


KINDS = st.sampled_from(
    [
        "event of a wrong type",
        "event missing",
        "no shopper",
        "userId of a wrong type",
        "properties not an object",
        "price not a number",
        "quantity not whole",
        "products malformed",
        "device not an object",
        "consent not a boolean",
        "text too long",
        "timestamp unreadable",
        "timestamp out of range",
        "timestamp ahead",
        "timestamp missing",
        "not a track call",
        "oversized",
        "sentAt unreadable",
        "not an object",
        "nested deeper than the collector writes",
        "nested deeper than the parser reads",
        "not JSON",
        "empty",
    ]
)
WRONG_TYPES = int64s | st.floats(allow_nan=False, allow_infinity=False) | st.booleans() | st.lists(int64s, max_size=2)


@st.composite
def fuzzed_event(draw: st.DrawFn, route: str, now: float) -> Case:
    """A valid event seven times in ten; otherwise one with one thing wrong, and its fate."""
    message = draw(valid_event(route, now))
    shopper = str(message.get("userId", message.get("anonymousId")))
    if draw(st.integers(0, 9)) < 7:
        return Case(route, "valid", message, orjson.dumps(message), PROCESSED, shopper)
    kind = draw(KINDS)
    bad: Any = None  # the JSON value sent, if it is one
    raw: bytes | None = None  # the bytes sent, when they are not simply `bad` written out
    fates: tuple[Fate, Fate]  # through the collector, straight onto the topic
    if kind == "event of a wrong type":
        bad, fates = mutated(message, event=draw(WRONG_TYPES)), everywhere("event: expected a string")
    elif kind == "event missing":
        bad, fates = (
            draw(st.sampled_from([without(message, "event"), mutated(message, event="")])),
            everywhere("event: "),
        )
    elif kind == "no shopper":
        bad, fates = without(message, "userId", "anonymousId"), everywhere("anonymousId or userId: at least one")
    elif kind == "userId of a wrong type":
        value = draw(
            st.floats(allow_nan=False, allow_infinity=False) | st.booleans() | st.lists(texts, max_size=2) | st.just({})
        )
        bad, fates = mutated(message, userId=value), everywhere("userId: expected a string")
    elif kind == "properties not an object":
        bad, fates = mutated(message, properties=draw(texts | int64s | st.just([]))), everywhere("properties: ")
    elif kind == "price not a number":
        price = draw(texts | st.booleans() | st.floats(max_value=-0.01, allow_infinity=False) | st.just([1.0]))
        bad, fates = with_properties(message, price=price), everywhere("properties.price: ")
    elif kind == "quantity not whole":
        quantity = draw(st.sampled_from([-1, 1.5, "2", True, [1]]))
        bad, fates = with_properties(message, quantity=quantity), everywhere("properties.quantity: ")
    elif kind == "products malformed":
        products = draw(st.sampled_from(["P1", [1, 2], {"product_id": "P1"}, [{"product_id": []}]]))
        bad, fates = with_properties(message, products=products), everywhere("properties.products")
    elif kind == "device not an object":
        bad, fates = mutated(message, context={"device": draw(texts | int64s)}), everywhere("context.device: ")
    elif kind == "consent not a boolean":
        preferences = {"categoryPreferences": {"Personalization": draw(texts | int64s | st.none())}}
        bad, fates = (
            mutated(message, context={"consent": preferences}),
            everywhere("context.consent.categoryPreferences"),
        )
    elif kind == "text too long":
        name = draw(st.sampled_from(["é", "x", "🛒"])) * draw(st.integers(513, 2_000))
        bad, fates = with_properties(message, name=name), everywhere("properties.name: longer than 512")
    elif kind == "timestamp unreadable":
        value = draw(st.sampled_from(["yesterday", "2026-13-45T00:00:00Z", "", "12:00", 1767225600, 17.5, [], {}]))
        bad, fates = mutated(message, timestamp=value), everywhere("timestamp: ")
    elif kind == "timestamp out of range":
        # valid ISO-8601 whose instant in UTC falls outside the years 1 to 9999
        value = draw(st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]))
        bad, fates = mutated(message, timestamp=value), everywhere("timestamp: ")
    elif kind == "timestamp ahead":
        # the collector cannot know the worker's clock: it forwards, the worker dead-letters
        ahead = draw(st.sampled_from(["2999-01-01T00:00:00Z", datetime.fromtimestamp(now + 3600, UTC).isoformat()]))
        reason = "ahead of the worker's clock"
        bad, fates = mutated(message, timestamp=ahead), (on_worker(reason), on_worker(reason))
    elif kind == "timestamp missing":
        if route == COLLECTOR:  # the collector fills it in, as Segment does: not wrong there
            return Case(route, "valid", message, orjson.dumps(message), PROCESSED, shopper)
        bad, fates = without(message, "timestamp"), (PROCESSED, on_worker("timestamp: required"))
    elif kind == "not a track call":
        bad, fates = (
            mutated(message, type=draw(st.sampled_from(["alias", "group", 7, ["track"]]))),
            everywhere("type: "),
        )
    elif kind == "oversized":
        padding = draw(st.sampled_from(["x", "é"])) * draw(st.integers(MAX_EVENT_BYTES, MAX_EVENT_BYTES + 8_000))
        bad, fates = mutated(message, padding=padding), everywhere("limit")
    elif kind == "sentAt unreadable":
        # only the collector reads sentAt (to correct the sender's clock)
        bad, fates = (
            mutated(message, sentAt=draw(st.sampled_from(["soon", 5, ""]))),
            (on_collector("sentAt"), PROCESSED),
        )
    elif kind == "not an object":
        bad, fates = draw(st.lists(int64s, max_size=2) | texts | int64s | st.none()), everywhere("JSON object")
    elif kind == "nested deeper than the collector writes":
        # the parsers read up to 1024 levels, the collector's writer (orjson) only 254
        bad = with_properties(message, extra=None)
        nesting = nested(draw(st.integers(260, 900)))
        raw = orjson.dumps(bad).replace(b'"extra":null', b'"extra":' + nesting)
        fates = (on_collector("deep"), PROCESSED)
    elif kind == "nested deeper than the parser reads":
        raw = b'{"event":"Product Viewed","properties":' + nested(draw(st.integers(1_030, 3_000))) + b"}"
        fates = everywhere("not valid JSON")
    elif kind == "not JSON":
        raw = draw(st.sampled_from([b"\xff\xfe", b"{event: Product Viewed", b'{"event": "\\ud800"}', b"[1,"]))
        fates = everywhere("not valid JSON")
    else:  # empty
        raw, fates = b"", (on_collector("not valid JSON"), on_worker("empty message"))
    fate = fates[0] if route == COLLECTOR else fates[1]
    sent = orjson.dumps(bad) if raw is None else raw
    return Case(route, kind, bad, sent, fate, shopper if fate == PROCESSED else None)


def generate(now: float) -> list[Case]:
    """EVENTS fuzzed events, half for each route, the same ones on every run."""
    examples: list[list[Case]] = []
    half = PER_EXAMPLE // 2

    @hypothesis_settings(
        max_examples=EVENTS // PER_EXAMPLE,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        st.lists(fuzzed_event(COLLECTOR, now), min_size=half, max_size=half),
        st.lists(fuzzed_event(DIRECT, now), min_size=half, max_size=half),
    )
    def collect(through_collector: list[Case], straight: list[Case]) -> None:
        examples.append(through_collector + straight)

    collect()
    cases = [case for example in examples for case in example]
    assert len(cases) == EVENTS, f"hypothesis generated {len(cases)} events"
    for number, case in enumerate(cases):  # unique ids: a repeated one is a duplicate, not an event
        if isinstance(case.message, dict) and case.message.get("messageId") == "set when sent":
            case.message = {**case.message, "messageId": f"fuzz-{number}"}
            case.raw = case.raw.replace(b'"set when sent"', f'"fuzz-{number}"'.encode())
    return cases


RAW_KINDS = frozenset({"nested deeper than the parser reads", "not JSON", "empty"})  # no batch can hold them


async def through_the_collector(url: str, cases: list[tuple[int, Case]]) -> dict[int, str | None]:
    """Send the cases in batches (the ones no batch can hold alone), and read each one's verdict
    from the answers: None if accepted, else the reason given."""
    verdicts: dict[int, str | None] = {}
    write_key = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    async with aiohttp.ClientSession(url, headers={"Authorization": write_key}) as http:

        async def call(path: str, body: bytes) -> tuple[int, dict[str, Any]]:
            async with http.post(path, data=body, headers={"Content-Type": "application/json"}) as response:
                text = await response.read()
                assert response.status in (200, 400), (response.status, text[:500], body[:300])
                return response.status, orjson.loads(text)

        batch: list[tuple[int, Case]] = []

        async def send_batch() -> None:
            status, answer = await call("/v1/batch", b'{"batch":[' + b",".join(c.raw for _, c in batch) + b"]}")
            reasons = {rejection["index"]: rejection["reason"] for rejection in answer["rejected"]}
            if status == 200:
                assert answer["accepted"] + len(reasons) == len(batch) and answer["duplicates"] == 0, answer
            for position, (number, _) in enumerate(batch):
                verdicts[number] = reasons.get(position)
            batch.clear()

        for number, case in cases:
            if case.kind in RAW_KINDS:
                status, answer = await call("/v1/track", case.raw)
                verdicts[number] = None if status == 200 else answer["message"]
                continue
            batch.append((number, case))
            if len(batch) == PER_EXAMPLE or sum(len(c.raw) for _, c in batch) > 300_000:
                await send_batch()
        if batch:
            await send_batch()
    return verdicts


async def straight_onto_the_topic(
    bootstrap: str, topic: str, cases: list[tuple[int, Case]]
) -> dict[tuple[int, int], int]:
    """Produce the cases (valid ones keyed by shopper); returns the case at each (partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2**20)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, case.raw, key=case.shopper.encode() if case.shopper else None)
            for _, case in cases
        ]
        positions = await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return {(p.partition, p.offset): number for p, (number, _) in zip(positions, cases, strict=True)}


async def whole_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every record on the topic now, in offset order per partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: list[tuple[bytes | None, bytes | None]] = []
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        async with asyncio.timeout(60):
            for partition in partitions:
                while await consumer.position(partition) < ends[partition]:
                    messages = (await consumer.getmany(partition, timeout_ms=300)).get(partition, [])
                    records += [(m.key, m.value) for m in messages]
    finally:
        await consumer.stop()
    return records


def window_events(windows: dict[str, bytes]) -> dict[str, list[bytes]]:
    """Each window's events as the window keeps them, without their ids (the collector and the
    worker give an event without one an id the offline run cannot know)."""
    return {
        key: [
            orjson.dumps(without(record, "m"), option=orjson.OPT_SORT_KEYS)
            for record in Window.from_bytes(raw).records()
        ]
        for key, raw in windows.items()
    }


async def online_windows(bootstrap: str, changelog: str) -> dict[str, bytes]:
    latest: dict[str, bytes | None] = {}
    for key, value in await whole_topic(bootstrap, changelog):
        assert key is not None
        decoded = orjson.loads(key)
        latest[decoded if isinstance(decoded, str) else key.decode()] = value
    return {key: value for key, value in latest.items() if value is not None}


def content(message: dict[str, Any], keep_id: bool) -> bytes:
    return orjson.dumps(
        without(message, "receivedAt", *(() if keep_id else ("messageId",))), option=orjson.OPT_SORT_KEYS
    )


async def test_ten_thousand_fuzzed_events_crash_nothing_lose_no_window_and_each_rejection_has_its_reason(
    deployment: Deployment,
) -> None:
    bootstrap = deployment.broker.bootstrap_servers
    worker = deployment.start_worker(INTENT_EXPIRY_CHECK_SECONDS="3600")  # every window is compared
    collector_port = free_port()
    log = (deployment.root / "collector.log").open("wb")
    deployment.log_files.append(log)
    collector = subprocess.Popen(
        [sys.executable, "-m", "intent", "collector"],
        env=deployment.environment(
            INTENT_WRITE_KEYS=WRITE_KEY,
            INTENT_COLLECTOR_PORT=str(collector_port),
            INTENT_COLLECTOR_RATE_LIMIT_PER_SECOND="0",
            INTENT_IDENTITIES_TOPIC=f"{deployment.app_id}-identities",
        ),
        cwd=REPO_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deployment.processes.append(collector)
    collector_url = f"http://127.0.0.1:{collector_port}"
    worker_url = f"http://127.0.0.1:{deployment.web_ports[0]}"

    async def healthy(url: str) -> bool:
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as response:
                return response.status == 200
        except aiohttp.ClientConnectionError:
            return False

    cases = await asyncio.to_thread(generate, time.time())  # while the worker and the collector start
    async with asyncio.timeout(60):
        while not await healthy(collector_url):
            await asyncio.sleep(0.5)

    routed = {route: [(n, c) for n, c in enumerate(cases) if c.route == route] for route in (COLLECTOR, DIRECT)}
    verdicts = await through_the_collector(collector_url, routed[COLLECTOR])
    at_position = await straight_onto_the_topic(bootstrap, deployment.events_topic, routed[DIRECT])
    await wait_for_lag_zero(bootstrap, deployment.app_id, deployment.events_topic, JOIN_AND_CATCH_UP_SECONDS)

    problems: list[str] = []
    # the collector: every case it must reject rejected with its reason, every other one accepted
    for number, case in routed[COLLECTOR]:
        verdict = verdicts[number]
        if case.fate.by == COLLECTOR:
            if verdict is None or case.fate.reason not in verdict:
                problems.append(f"collector, {case.kind}: {verdict!r}, wanted {case.fate.reason!r}: {case.raw[:200]!r}")
        elif verdict is not None:
            problems.append(f"collector rejected a {case.kind} event: {verdict!r}: {case.raw[:200]!r}")

    # the worker's dead letters: each one a case the worker must reject, with its reason
    must_dead_letter = {n for n, c in enumerate(cases) if c.fate.by == "worker"} - {
        n for n, c in routed[COLLECTOR] if verdicts[n] is not None
    }
    await read_until(bootstrap, deployment.dead_letter_topic, lambda r: len(r) >= len(must_dead_letter), 60)
    forwarded: dict[bytes, list[int]] = {}  # the collector's accepted cases by content
    for number, case in routed[COLLECTOR]:
        if verdicts[number] is None and isinstance(case.message, dict):
            keep_id = "messageId" in case.message
            forwarded.setdefault(content(case.message, keep_id), []).append(number)
    dead_lettered: Counter[int] = Counter()
    for _, value in await whole_topic(bootstrap, deployment.dead_letter_topic):
        assert value is not None
        letter = orjson.loads(value)
        number = at_position.get((letter["partition"], letter["offset"]))
        if number is None:  # forwarded by the collector, with the fields it adds
            original = orjson.loads(base64.b64decode(letter["original_base64"]))
            candidates = forwarded.get(content(original, True)) or forwarded.get(content(original, False)) or [-1]
            number = candidates[0]
        if number < 0:
            problems.append(f"a dead letter of no event sent: {letter}")
            continue
        dead_lettered[number] += 1
        case = cases[number]
        if case.fate.by != "worker" or case.fate.reason not in letter["reason"]:
            problems.append(f"worker, {case.route} {case.kind}: {letter['reason']!r}, wanted {case.fate}")
    problems += [
        f"never dead-lettered: {cases[n].route} {cases[n].kind} {cases[n].raw[:200]!r}"
        for n in must_dead_letter - set(dead_lettered)
    ]
    repeated_letters = sum(count - 1 for count in dead_lettered.values())

    # no window lost: each shopper's window holds what the offline tracker puts there
    processed = [(n, c) for n, c in enumerate(cases) if c.fate == PROCESSED]
    offline = IntentTracker(IntentModel.load(get_settings().model_dir), WindowPolicy(), DictStore(), DictStore())
    offline.process([event_from_dict(case.message, f"offline-{n}") for n, case in processed])
    offline.save()
    lost = duplicated = in_windows = 0
    for table, store in (("session-windows", offline.sessions), ("shopper-windows", offline.shoppers)):
        assert isinstance(store, DictStore)
        expected = window_events(store.data)
        online = window_events(await online_windows(bootstrap, f"{deployment.app_id}-{table}-changelog"))
        in_windows += sum(map(len, online.values()))
        for key in expected.keys() | online.keys():
            wanted, held = Counter(expected.get(key, [])), Counter(online.get(key, []))
            lost += (wanted - held).total()
            duplicated += (held - wanted).total()
            if wanted != held or expected.get(key) != online.get(key):
                problems.append(
                    f"{table} {key!r}: {len(wanted - held)} missing, {len(held - wanted)} extra or out of order"
                )

    async with aiohttp.ClientSession() as http, http.get(f"{worker_url}/metrics") as response:
        metrics = await response.text()
    read = next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith("intent_events_in_total "))
    processed_online = int(read) - sum(dead_lettered.values())  # read, and not dead-lettered
    accepted = sum(verdict is None for verdict in verdicts.values())
    if read != accepted + len(routed[DIRECT]):
        problems.append(f"the worker read {read} events, not the {accepted + len(routed[DIRECT])} on the topic")
    alive = worker.poll() is None and collector.poll() is None
    health = await healthy(worker_url) and await healthy(collector_url)
    print(
        f"\nfuzzed events: {len(cases)} sent ({len(routed[COLLECTOR])} through the collector, {accepted} accepted; "
        f"{len(routed[DIRECT])} straight onto the topic); {len(processed)} valid, {processed_online} processed "
        f"({in_windows} still in windows, the rest dropped by the windows' bounds, as offline); "
        f"{sum(dead_lettered.values())} dead-lettered ({len(must_dead_letter)} expected); {lost} lost, "
        f"{duplicated + repeated_letters} duplicated; kinds: {dict(Counter(c.kind for c in cases))}"
    )
    assert alive and health, deployment.logs() + (deployment.root / "collector.log").read_text()[-3000:]
    assert not problems, f"{len(problems)} problems, the first: " + "\n".join(problems[:15])
    assert lost == duplicated == repeated_letters == 0
    assert processed_online == len(processed)
