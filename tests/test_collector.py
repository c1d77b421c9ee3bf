"""The collector speaks Segment's HTTP API: the official client delivers through it, unmodified, and
every event it accepts is on the events topic, once, keyed by shopper."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from itertools import islice
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from intent import observability
from intent.broker import EmbeddedBroker, free_port
from intent.collector import DuplicateFilter, RateLimit, create_collector_app
from intent.events import OTHER_EVENT, event_from_dict, iso_time, parse_time
from intent.kafka import ensure_topics, producer
from intent.loadgen import send_load, simulated_messages
from intent.settings import Settings

KEY = "wk_test"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}

Collector = tuple[TestClient, Settings]
StartCollector = Callable[..., AbstractAsyncContextManager[Collector]]


def track(message_id: str, **fields: object) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Product Viewed",
        "messageId": message_id,
        "anonymousId": "anon-1",
        "timestamp": "2026-01-28T11:00:00Z",
        "properties": {"product_id": "P0036", "category": "herbal tea", "price": 2.3},
        **fields,
    }


@asynccontextmanager
async def running_collector(
    bootstrap_servers: str, events_producer: AIOKafkaProducer | None = None, **overrides: Any
) -> AsyncIterator[Collector]:
    """A collector on a real localhost socket, producing to fresh topics of the broker."""
    run = uuid.uuid4().hex[:8]
    options: dict[str, Any] = {
        "broker_url": f"kafka://{bootstrap_servers}",
        "events_topic": f"collect-{run}",
        "identities_topic": f"ids-{run}",
        "write_keys": f"other-key,{KEY}",
        **overrides,
    }
    settings = Settings(**options)
    await ensure_topics(bootstrap_servers, [settings.events_topic], 4)
    owned = events_producer is None
    events_producer = events_producer or producer(bootstrap_servers)
    if owned:
        await events_producer.start()
    http = TestClient(TestServer(create_collector_app(settings, events_producer)))
    await http.start_server()
    try:
        yield http, settings
    finally:
        await http.close()
        if owned:
            await events_producer.stop()


@pytest.fixture
def start_collector(broker: EmbeddedBroker) -> StartCollector:
    return lambda **overrides: running_collector(broker.bootstrap_servers, **overrides)


@pytest.fixture
async def collector(start_collector: StartCollector) -> AsyncIterator[Collector]:
    async with start_collector() as running:
        yield running


async def topic_records(
    settings: Settings, topic: str | None = None, decode: Callable[[bytes], Any] = orjson.loads
) -> list[tuple[bytes, Any]]:
    """(key, decoded value) of every record on the topic now.

    Read up to the end offsets taken first: the collector answers only once the broker has
    acknowledged, so everything it accepted is there, and nothing needs a wait to be ruled out.
    """
    topic = topic or settings.events_topic
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    records: list[tuple[bytes, Any]] = []
    try:
        await consumer.topics()  # loads the metadata that names the partitions
        partitions = [TopicPartition(topic, partition) for partition in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        async with asyncio.timeout(30):
            for partition in partitions:
                while await consumer.position(partition) < ends[partition]:
                    messages = (await consumer.getmany(partition, timeout_ms=300)).get(partition, [])
                    records += [(m.key, decode(m.value)) for m in messages]
    finally:
        await consumer.stop()
    return records


def by_message_id(records: list[tuple[bytes, dict[str, Any]]]) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """The records by messageId, each as its sender sent it (see `as_sent`)."""
    return {record["messageId"]: (key, as_sent(record)) for key, record in records}


def as_sent(record: dict[str, Any]) -> dict[str, Any]:
    """A record without what the collector adds on arrival, as Segment does: `receivedAt`, and for a
    message sent with `sentAt` (its own or its batch's) the clock correction of its timestamp."""
    sent = dict(record)
    assert parse_time(sent.pop("receivedAt"), "receivedAt") > 0
    if "originalTimestamp" in sent:
        sent["timestamp"] = sent.pop("originalTimestamp")
        del sent["sentAt"]
    return sent


# --- write keys ---------------------------------------------------------------------------------


@pytest.mark.integration
async def test_a_call_without_a_known_write_key_is_refused(collector: Collector) -> None:
    http, settings = collector
    refused = [
        ({}, track("m1")),
        ({"Authorization": "Basic " + base64.b64encode(b"wrong:").decode()}, track("m2")),
        ({"Authorization": "Basic not-base64!"}, track("m3")),
        ({"Authorization": f"Bearer {KEY}"}, track("m4")),
        ({}, {**track("m5"), "writeKey": "wrong"}),
    ]
    for headers, body in refused:
        response = await http.post("/v1/track", json=body, headers=headers)
        assert response.status == 401
        assert (await response.json())["code"] == "unauthorized"
    assert await topic_records(settings) == []


@pytest.mark.integration
async def test_the_write_key_is_taken_from_basic_auth_or_from_the_body(collector: Collector) -> None:
    http, settings = collector
    no_colon = {"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()}
    assert (await http.post("/v1/track", json=track("basic"), headers=AUTH)).status == 200
    assert (await http.post("/v1/track", json=track("no-colon"), headers=no_colon)).status == 200
    assert (await http.post("/v1/track", json={**track("in-body"), "writeKey": KEY})).status == 200
    batch = {"batch": [track("in-batch-body")], "writeKey": KEY}
    assert (await http.post("/v1/batch", json=batch)).status == 200
    records = by_message_id(await topic_records(settings))
    assert set(records) == {"basic", "no-colon", "in-body", "in-batch-body"}
    assert "writeKey" not in records["in-body"][1]  # the credential is not passed on


@pytest.mark.integration
async def test_without_write_keys_configured_every_call_is_refused(start_collector: StartCollector) -> None:
    async with start_collector(write_keys="") as (http, _):
        assert (await http.post("/v1/track", json=track("m1"), headers=AUTH)).status == 401
        assert (await http.post("/v1/track", json={**track("m2"), "writeKey": ""})).status == 401


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (track("x", timestamp="yesterday"), "timestamp: not ISO-8601: 'yesterday'"),
        (track("x", event=None), "event: required"),
        (track("x", anonymousId=None), "anonymousId or userId: at least one is required"),
        (track("x", properties={"price": "free"}), "properties.price: expected a number, got str"),
        (track("x", context={"device": "phone"}), "context.device: expected an object, got str"),
        ({**track("x"), "type": "alias"}, "type: 'alias' is not one of ['identify', 'page', 'screen', 'track']"),
        # JSON readers take 1024 levels, orjson writes 254: the collector could not send it on
        (
            track("x", properties={"extra": orjson.loads(b"[" * 300 + b"]" * 300)}),
            "a message may nest objects and arrays at most 254 levels deep",
        ),
    ],
)
async def test_a_single_bad_message_is_a_400_with_the_parsers_reason(
    collector: Collector, message: dict[str, Any], reason: str
) -> None:
    http, _ = collector
    response = await http.post("/v1/track", json=message, headers=AUTH)
    assert response.status == 400
    assert await response.json() == {
        "success": False,
        "code": "invalid_request",
        "message": reason,
        "rejected": [{"index": 0, "messageId": "x", "reason": reason}],
    }


@pytest.mark.integration
async def test_a_body_that_is_not_a_json_object_is_a_400_with_the_reason(collector: Collector) -> None:
    http, _ = collector
    not_json = await http.post("/v1/track", data=b"{event: Product Viewed", headers=AUTH)
    assert not_json.status == 400 and (await not_json.json())["message"].startswith("not valid JSON")
    a_list = await http.post("/v1/track", json=[track("x")], headers=AUTH)
    assert a_list.status == 400 and (await a_list.json())["message"] == "the body must be a JSON object"
    no_batch = await http.post("/v1/batch", json={"batch": {"event": "x"}}, headers=AUTH)
    assert no_batch.status == 400 and (await no_batch.json())["message"] == "batch: expected a list of messages"


@pytest.mark.integration
async def test_a_batch_keeps_its_good_messages_and_says_why_each_bad_one_was_rejected(collector: Collector) -> None:
    http, settings = collector
    batch = [
        track("good-1"),
        track("bad-1", properties={"price": "free"}),
        "not an object",
        track("good-2", userId="ada"),
        {**track("bad-2"), "type": "group"},
    ]
    response = await http.post("/v1/batch", json={"batch": batch}, headers=AUTH)
    assert response.status == 200
    assert await response.json() == {
        "success": True,
        "accepted": 2,
        "duplicates": 0,
        "rejected": [
            {"index": 1, "messageId": "bad-1", "reason": "properties.price: expected a number, got str"},
            {"index": 2, "messageId": None, "reason": "a message is a JSON object"},
            {
                "index": 4,
                "messageId": "bad-2",
                "reason": "type: 'group' is not one of ['identify', 'page', 'screen', 'track']",
            },
        ],
    }
    records = by_message_id(await topic_records(settings))
    assert records == {"good-1": (b"anon-1", batch[0]), "good-2": (b"ada", batch[3])}


@pytest.mark.integration
async def test_a_batch_with_only_bad_messages_is_a_400_listing_each(collector: Collector) -> None:
    http, _ = collector
    batch = [track("a", timestamp=5), track("b", event="")]
    response = await http.post("/v1/batch", json={"batch": batch}, headers=AUTH)
    answer = await response.json()
    assert response.status == 400
    assert answer["message"] == "timestamp: expected an ISO-8601 string, got int"
    assert [(r["messageId"], r["reason"]) for r in answer["rejected"]] == [
        ("a", "timestamp: expected an ISO-8601 string, got int"),
        ("b", "event: required"),
    ]


@pytest.mark.integration
async def test_a_missing_message_id_or_timestamp_is_filled_in_as_segment_does(collector: Collector) -> None:
    http, settings = collector
    message = track("unused")
    del message["messageId"], message["timestamp"]
    assert (await http.post("/v1/track", json=message, headers=AUTH)).status == 200
    [(_, record)] = await topic_records(settings)
    event = event_from_dict(record)
    assert uuid.UUID(event.message_id)
    assert event.timestamp > 0 and record["timestamp"].endswith("Z")


@pytest.mark.integration
async def test_a_page_call_becomes_a_page_viewed_event_the_worker_keeps_as_other(collector: Collector) -> None:
    http, settings = collector
    page = {
        "messageId": "page-1",
        "userId": "ada",
        "name": "Home",
        "timestamp": "2026-01-28T11:00:00Z",
        "properties": {"path": "/"},
    }
    assert (await http.post("/v1/page", json=page, headers=AUTH)).status == 200
    assert (await http.post("/v1/p", json={**page, "messageId": "page-2"}, headers=AUTH)).status == 200
    records = by_message_id(await topic_records(settings))
    key, record = records["page-1"]
    assert key == b"ada"
    assert record == {**page, "type": "track", "event": "Page Viewed"}
    event = event_from_dict(record)
    assert (event.event_type, event.name) == (OTHER_EVENT, "Page Viewed")
    assert set(records) == {"page-1", "page-2"}


# --- clocks -------------------------------------------------------------------------------------

HOUR = 3600.0


@pytest.mark.integration
async def test_a_client_clock_an_hour_ahead_is_corrected_by_the_time_the_call_arrived(collector: Collector) -> None:
    http, settings = collector
    client_now = time.time() + HOUR  # the shopper's clock is an hour fast
    viewed_two_seconds_ago = iso_time(client_now - 2)
    message = track("fast-clock", timestamp=viewed_two_seconds_ago, sentAt=iso_time(client_now))
    before = time.time()
    assert (await http.post("/v1/track", json=message, headers=AUTH)).status == 200
    after = time.time()

    [(_, record)] = await topic_records(settings)
    received = parse_time(record["receivedAt"])
    assert before - 0.01 <= received <= after + 0.01  # the collector's clock, to the millisecond
    assert parse_time(record["timestamp"]) == pytest.approx(received - 2, abs=0.01)
    assert record["originalTimestamp"] == viewed_two_seconds_ago
    assert event_from_dict(record).timestamp == pytest.approx(received - 2, abs=0.01)  # what the worker reads


@pytest.mark.integration
async def test_a_batchs_sent_at_corrects_each_of_its_messages_unless_one_says_its_own(collector: Collector) -> None:
    http, settings = collector
    client_now = time.time() + HOUR
    batch = {
        "sentAt": iso_time(client_now),
        "batch": [
            track("first", timestamp=iso_time(client_now - 30)),
            track("second", timestamp=iso_time(client_now - 10)),
            track("own-clock", timestamp=iso_time(client_now - 5), sentAt=iso_time(client_now - HOUR)),
            track("no-timestamp", timestamp=None),
        ],
    }
    assert (await (await http.post("/v1/batch", json=batch, headers=AUTH)).json())["accepted"] == 4

    records = {record["messageId"]: record for _, record in await topic_records(settings)}
    received = parse_time(records["first"]["receivedAt"])
    ages = {message_id: received - parse_time(record["timestamp"]) for message_id, record in records.items()}
    assert ages == pytest.approx(
        {"first": 30.0, "second": 10.0, "own-clock": 5.0 - HOUR, "no-timestamp": 0.0}, abs=0.01
    )
    assert records["first"]["sentAt"] == batch["sentAt"]
    assert "originalTimestamp" not in records["no-timestamp"]  # the collector's own time needs no correction


@pytest.mark.integration
async def test_without_sent_at_the_timestamp_is_kept_and_the_arrival_is_recorded(collector: Collector) -> None:
    http, settings = collector
    assert (await http.post("/v1/track", json=track("no-sent-at"), headers=AUTH)).status == 200
    [(_, record)] = await topic_records(settings)
    assert record["timestamp"] == track("no-sent-at")["timestamp"]
    assert "originalTimestamp" not in record and parse_time(record["receivedAt"]) > 0


@pytest.mark.integration
async def test_a_sent_at_that_is_not_a_time_rejects_its_message_with_the_reason(collector: Collector) -> None:
    http, settings = collector
    batch = {"batch": [track("bad-clock", sentAt="yesterday"), track("far", sentAt="9999-12-31T00:00:00Z")]}
    response = await http.post("/v1/batch", json=batch, headers=AUTH)
    assert response.status == 400
    assert [(r["messageId"], r["reason"]) for r in (await response.json())["rejected"]] == [
        ("bad-clock", "sentAt: not ISO-8601: 'yesterday'"),
        ("far", "sentAt: the timestamp corrected by it is out of range"),
    ]
    assert await topic_records(settings) == []


@pytest.mark.integration
async def test_a_message_the_clock_correction_takes_over_the_workers_limit_is_rejected_not_dead_lettered(
    collector: Collector,
) -> None:
    http, settings = collector
    message = track("just-under", sentAt="2026-01-28T11:00:01Z", context={"note": ""})
    message["context"]["note"] = "x" * (settings.max_event_bytes - len(orjson.dumps(message)) - 10)
    # sent compact, as orjson writes it: under the limit as sent
    response = await http.post("/v1/track", data=orjson.dumps(message), headers=AUTH)
    assert response.status == 400
    assert (await response.json())["message"].startswith("a message is limited to 32768 bytes with the fields")
    message["context"]["note"] = message["context"]["note"][:-200]
    assert (await http.post("/v1/track", data=orjson.dumps(message), headers=AUTH)).status == 200


# --- rate limit ---------------------------------------------------------------------------------


def test_the_rate_limit_counts_events_and_refills_at_its_rate() -> None:
    limit = RateLimit(rate=10.0, burst=20)
    assert limit.take("key", 20, now=0.0) == 0.0  # the burst at once
    assert limit.take("key", 1, now=0.0) == pytest.approx(0.1)  # then nothing taken: wait 0.1 s
    assert limit.take("other key", 20, now=0.0) == 0.0  # each key has its own bucket
    assert limit.take("key", 5, now=0.5) == 0.0  # refilled at 10 a second
    assert limit.take("key", 1, now=0.5) == pytest.approx(0.1)
    assert limit.take("key", 500, now=100.0) == 0.0  # a call over the burst costs the burst
    assert RateLimit(rate=0.0, burst=0).take("key", 10**6, now=0.0) == 0.0  # rate 0: no limit


def rate_limited_messages() -> float:
    return observability.REGISTRY.get_sample_value("intent_collector_messages_total", {"outcome": "rate_limited"}) or 0


@pytest.mark.integration
async def test_a_write_key_over_its_rate_is_answered_429_with_retry_after_and_nothing_is_taken(
    start_collector: StartCollector,
) -> None:
    other_key = {"Authorization": "Basic " + base64.b64encode(b"other-key:").decode()}
    limited_before = rate_limited_messages()
    async with start_collector(collector_rate_limit_per_second=1.0, collector_rate_limit_burst=20) as (http, settings):
        burst = {"batch": [track(f"m{n}") for n in range(20)]}
        assert (await http.post("/v1/batch", json=burst, headers=AUTH)).status == 200
        response = await http.post("/v1/batch", json={"batch": [track(f"over-{n}") for n in range(5)]}, headers=AUTH)
        assert response.status == 429
        assert response.headers["Retry-After"] == "5"  # 5 events at 1 a second
        assert (await response.json())["code"] == "rate_limited"
        assert (await http.post("/v1/track", json=track("single"), headers=AUTH)).status == 429
        assert (await http.post("/v1/track", json=track("other-key"), headers=other_key)).status == 200
    assert rate_limited_messages() - limited_before == 6
    assert {record["messageId"] for _, record in await topic_records(settings)} == {
        *(f"m{n}" for n in range(20)),
        "other-key",
    }


@pytest.mark.integration
async def test_duplicates_are_acknowledged_but_produced_once(collector: Collector) -> None:
    http, settings = collector
    for _ in range(3):
        response = await http.post("/v1/track", json=track("same"), headers=AUTH)
        assert response.status == 200
    answer = await (await http.post("/v1/track", json=track("same"), headers=AUTH)).json()
    assert (answer["accepted"], answer["duplicates"]) == (0, 1)
    batch = {"batch": [track("other"), track("other"), track("same")]}
    answer = await (await http.post("/v1/batch", json=batch, headers=AUTH)).json()
    assert (answer["accepted"], answer["duplicates"]) == (1, 2)
    records = await topic_records(settings)
    assert sorted(record["messageId"] for _, record in records) == ["other", "same"]


@pytest.mark.integration
async def test_a_rejected_message_does_not_use_up_its_message_id(collector: Collector) -> None:
    http, settings = collector
    assert (await http.post("/v1/track", json=track("fixed", event=None), headers=AUTH)).status == 400
    assert (await http.post("/v1/track", json=track("fixed"), headers=AUTH)).status == 200
    assert [record["messageId"] for _, record in await topic_records(settings)] == ["fixed"]


def test_a_message_id_is_a_duplicate_only_within_the_window() -> None:
    duplicates = DuplicateFilter(seconds=60, max_ids=100)
    assert duplicates.add("m1", now=0.0)
    assert not duplicates.add("m1", now=59.0)
    assert duplicates.add("m1", now=60.5)


def test_the_duplicate_filter_remembers_at_most_max_ids() -> None:
    duplicates = DuplicateFilter(seconds=3600, max_ids=3)
    for number in range(10):
        assert duplicates.add(f"m{number}", now=float(number))
    assert len(duplicates) == 3
    assert not duplicates.add("m9", now=10.0)
    assert duplicates.add("m0", now=10.0)  # the oldest were forgotten first


# --- size limits --------------------------------------------------------------------------------


@pytest.mark.integration
async def test_a_message_over_the_message_limit_is_rejected_and_a_call_over_the_call_limit_is_413(
    start_collector: StartCollector,
) -> None:
    async with start_collector(collector_max_batch_bytes=100_000) as (http, settings):
        big = track("big", properties={"name": "x" * 40_000})
        response = await http.post("/v1/track", json=big, headers=AUTH)
        assert response.status == 400
        assert (await response.json())["message"] == "a message is limited to 32768 bytes"

        batch = {"batch": [track("small"), big]}
        answer = await (await http.post("/v1/batch", json=batch, headers=AUTH)).json()
        assert answer["accepted"] == 1
        assert answer["rejected"] == [{"index": 1, "messageId": "big", "reason": "a message is limited to 32768 bytes"}]

        huge = {"batch": [track(f"m{n}", properties={"name": "x" * 20_000}) for n in range(6)]}
        response = await http.post("/v1/batch", json=huge, headers=AUTH)
        assert response.status == 413
        assert await response.json() == {
            "success": False,
            "code": "too_large",
            "message": "a call is limited to 100000 bytes",
        }
        assert [record["messageId"] for _, record in await topic_records(settings)] == ["small"]


# --- identity -----------------------------------------------------------------------------------


def identify(message_id: str, anonymous_id: str, user_id: str) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": message_id,
        "anonymousId": anonymous_id,
        "userId": user_id,
        "timestamp": "2026-01-28T11:00:00Z",
        "traits": {"segment": "coffee lovers"},
    }


@pytest.mark.integration
async def test_after_identify_the_anonymous_shoppers_events_carry_the_user_and_are_keyed_by_it(
    collector: Collector,
) -> None:
    http, settings = collector
    assert (await http.post("/v1/track", json=track("before-login"), headers=AUTH)).status == 200
    assert (await http.post("/v1/identify", json=identify("id-1", "anon-1", "user-9"), headers=AUTH)).status == 200
    assert (await http.post("/v1/track", json=track("after-login"), headers=AUTH)).status == 200
    records = by_message_id(await topic_records(settings))
    assert set(records) == {"before-login", "after-login"}  # the identify call itself is not an event
    assert records["before-login"] == (b"anon-1", track("before-login"))
    assert records["after-login"] == (b"user-9", {**track("after-login"), "userId": "user-9"})
    assert event_from_dict(records["after-login"][1]).shopper_id == "user-9"


@pytest.mark.integration
async def test_a_link_applies_to_the_rest_of_its_batch_and_survives_a_restart(
    start_collector: StartCollector,
) -> None:
    batch = {"batch": [track("first"), identify("id-1", "anon-1", "user-9"), track("second")]}
    async with start_collector() as (http, settings):
        answer = await (await http.post("/v1/batch", json=batch, headers=AUTH)).json()
        assert answer["accepted"] == 3
    # a new collector on the same topics rebuilds the links from the identities topic
    same_topics = {"events_topic": settings.events_topic, "identities_topic": settings.identities_topic}
    async with start_collector(**same_topics) as (http, _):
        assert (await http.post("/v1/track", json=track("after-restart"), headers=AUTH)).status == 200
    keys = {message_id: key for message_id, (key, _) in by_message_id(await topic_records(settings)).items()}
    assert keys == {"first": b"anon-1", "second": b"user-9", "after-restart": b"user-9"}
    links = await topic_records(settings, topic=settings.identities_topic, decode=bytes)
    assert links == [(b"anon-1", b"user-9")]


@pytest.mark.integration
async def test_an_identify_without_a_user_is_rejected_and_one_without_a_visitor_links_nothing(
    collector: Collector,
) -> None:
    http, settings = collector
    no_user = {**identify("id-1", "anon-1", "u"), "userId": None}
    response = await http.post("/v1/identify", json=no_user, headers=AUTH)
    assert response.status == 400
    assert (await response.json())["message"] == "userId: identify needs the user it identifies"
    no_visitor = {**identify("id-2", "anon-1", "user-9"), "anonymousId": None}
    assert (await http.post("/v1/i", json=no_visitor, headers=AUTH)).status == 200
    assert (await http.post("/v1/track", json=track("still-anonymous"), headers=AUTH)).status == 200
    [(key, record)] = await topic_records(settings)
    assert key == b"anon-1" and "userId" not in record


def evicted_identities() -> float:
    return observability.REGISTRY.get_sample_value("intent_collector_identities_evicted_total") or 0


@pytest.mark.integration
async def test_the_collector_keeps_the_newest_identity_links_and_the_topic_keeps_them_all(
    start_collector: StartCollector,
) -> None:
    evicted_before = evicted_identities()
    async with start_collector(collector_max_identities=2) as (http, settings):
        for number in (1, 2, 3):
            linked = identify(f"id-{number}", f"anon-{number}", f"user-{number}")
            assert (await http.post("/v1/identify", json=linked, headers=AUTH)).status == 200
        for number in (1, 3):
            sent = track(f"after-{number}", anonymousId=f"anon-{number}")
            assert (await http.post("/v1/track", json=sent, headers=AUTH)).status == 200
    assert evicted_identities() - evicted_before == 1
    keys = {message_id: key for message_id, (key, _) in by_message_id(await topic_records(settings)).items()}
    assert keys == {"after-1": b"anon-1", "after-3": b"user-3"}  # the oldest link was forgotten
    links = await topic_records(settings, topic=settings.identities_topic, decode=bytes)
    assert len(links) == 3
    # a collector started on the topic keeps the newest links of it
    same_topics = {"events_topic": settings.events_topic, "identities_topic": settings.identities_topic}
    async with start_collector(collector_max_identities=2, **same_topics) as (http, _):
        assert (
            await http.post("/v1/track", json=track("restarted-2", anonymousId="anon-2"), headers=AUTH)
        ).status == 200
    keys = {message_id: key for message_id, (key, _) in by_message_id(await topic_records(settings)).items()}
    assert keys["restarted-2"] == b"user-2"


# --- delivery -----------------------------------------------------------------------------------


@pytest.mark.integration
async def test_concurrent_calls_lose_nothing_and_produce_each_event_once(collector: Collector) -> None:
    http, settings = collector
    calls = [
        {"batch": [track(f"m{call}-{n}", anonymousId=f"shopper-{n % 7}") for n in range(25)]} for call in range(40)
    ]
    responses = await asyncio.gather(*(http.post("/v1/batch", json=call, headers=AUTH) for call in calls))
    answers = [await response.json() for response in responses]
    assert sum(answer["accepted"] for answer in answers) == 1000
    records = await topic_records(settings)
    assert len(records) == 1000
    assert {record["messageId"] for _, record in records} == {m["messageId"] for call in calls for m in call["batch"]}
    assert all(key == record["anonymousId"].encode() for key, record in records)


@pytest.mark.integration
@pytest.mark.parametrize("batch_size", [20, None], ids=["batches", "single-tracks"])
async def test_the_load_generator_delivers_every_simulated_event_through_the_collector(
    collector: Collector, batch_size: int | None
) -> None:
    http, settings = collector
    messages = list(islice(simulated_messages(shoppers=3, seed=1), 45))
    report = await send_load(str(http.make_url("")).rstrip("/"), KEY, messages, rate=2000.0, batch_size=batch_size)
    assert (report.events_sent, report.events_accepted, report.failed_calls) == (45, 45, 0)
    assert report.calls == (3 if batch_size else 45) and len(report.latencies) == report.calls
    assert {record["messageId"] for _, record in await topic_records(settings)} == {m["messageId"] for m in messages}


@pytest.mark.integration
async def test_when_the_broker_does_not_acknowledge_the_call_is_503_and_its_retry_is_not_a_duplicate(
    tmp_path: Any,
) -> None:
    port = free_port()
    broker = EmbeddedBroker(port=port, log_path=tmp_path / "broker.log")
    broker.start()
    events_producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", request_timeout_ms=2000)
    await events_producer.start()
    try:
        async with running_collector(broker.bootstrap_servers, events_producer) as (http, settings):
            assert (await http.post("/v1/track", json=track("before"), headers=AUTH)).status == 200
            broker.stop()
            response = await http.post("/v1/track", json=track("during"), headers=AUTH)
            assert response.status == 503
            assert (await response.json())["code"] == "unavailable"
            broker = EmbeddedBroker(port=port, log_path=tmp_path / "broker-again.log")
            broker.start()  # memory-only: an empty broker again
            await ensure_topics(broker.bootstrap_servers, [settings.events_topic], 4)
            response = await http.post("/v1/track", json=track("during"), headers=AUTH)
            assert response.status == 200
            assert (await response.json())["accepted"] == 1
            assert [record["messageId"] for _, record in await topic_records(settings)] == ["during"]
    finally:
        await events_producer.stop()
        broker.stop()


@pytest.mark.integration
async def test_the_official_segment_client_delivers_each_call_unmodified(collector: Collector) -> None:
    from segment.analytics import Client

    http, settings = collector
    client = Client(write_key=KEY, host=str(http.make_url("")).rstrip("/"), sync_mode=True, max_retries=1)
    calls = [
        ("Product Viewed", {"product_id": "P0036", "category": "herbal tea", "price": 2.3}),
        ("Products Searched", {"query": "mint tea"}),
        ("Order Completed", {"products": [{"product_id": "P0036", "price": 2.3, "quantity": 2}]}),
    ]
    sent = []
    for name, properties in calls:
        succeeded, message = await asyncio.to_thread(
            client.track,
            anonymous_id="visitor-7",
            event=name,
            properties=properties,
            context={"sessionId": "s1", "locale": "en-GB"},
        )
        assert succeeded
        sent.append(message)
    records = by_message_id(await topic_records(settings))
    assert [records[message["messageId"]] for message in sent] == [(b"visitor-7", message) for message in sent]
    assert [event_from_dict(message).event_type for message in sent] == [name for name, _ in calls]


@pytest.mark.integration
async def test_the_official_segment_client_delivers_a_gzipped_batch_on_flush(collector: Collector) -> None:
    from segment.analytics import Client

    http, settings = collector
    client = Client(write_key=KEY, host=str(http.make_url("")).rstrip("/"), gzip=True, max_retries=1)
    try:
        _, visit = client.track(anonymous_id="visitor-8", event="Product Viewed", properties={"product_id": "P1"})
        _, login = client.identify(user_id="grace", anonymous_id="visitor-8", traits={"segment": "tea"})
        _, page = client.page(anonymous_id="visitor-8", name="Checkout")
        _, order = client.track(anonymous_id="visitor-8", event="Order Completed", properties={"total": 9.5})
        await asyncio.to_thread(client.flush)
    finally:
        await asyncio.to_thread(client.join)
    records = by_message_id(await topic_records(settings))
    assert set(records) == {visit["messageId"], page["messageId"], order["messageId"]}
    assert records[visit["messageId"]] == (b"visitor-8", visit)
    # after the identify the visitor's events carry the user and are keyed by it
    assert records[page["messageId"]] == (
        b"grace",
        {**page, "type": "track", "event": "Page Viewed", "userId": "grace"},
    )
    assert records[order["messageId"]] == (b"grace", {**order, "userId": "grace"})
    assert login["type"] == "identify"


# --- fuzzing ------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
timestamps = st.datetimes(timezones=st.timezones()).map(lambda moment: moment.isoformat()) | json_values
message_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["track", "page", "screen", "identify", "alias"]) | json_values,
        "event": st.sampled_from(["Product Viewed", "Order Completed", ""]) | json_values,
        "messageId": st.uuids().map(str) | json_values,
        "userId": st.text(max_size=8) | json_values,
        "anonymousId": st.text(max_size=8) | json_values,
        "timestamp": timestamps,
        "sentAt": timestamps,
        "properties": json_values,
        "context": json_values,
        "writeKey": st.just(KEY) | json_values,
    },
)
bodies = st.one_of(
    json_values,
    message_like,
    st.fixed_dictionaries({"batch": st.lists(message_like | json_values, max_size=5)}, optional={"sentAt": timestamps}),
    st.binary(max_size=40),
)


@pytest.mark.integration
@hypothesis_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, path=st.sampled_from(["/v1/track", "/v1/batch", "/v1/identify", "/v1/page", "/v1/t"]))
async def test_any_body_gets_an_answer_with_a_reason_never_a_server_error(
    collector: Collector, body: Any, path: str
) -> None:
    http, _ = collector
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    response = await http.post(path, data=data, headers=AUTH)
    answer = await response.json()
    assert response.status in (200, 400)
    assert answer["success"] is (response.status == 200)
    if response.status == 400:
        assert answer["message"]
    for rejection in answer.get("rejected", []):
        assert rejection["reason"]
    if response.status == 200:
        messages = body["batch"] if path == "/v1/batch" else [body]
        assert answer["accepted"] + answer["duplicates"] + len(answer["rejected"]) == len(messages)
