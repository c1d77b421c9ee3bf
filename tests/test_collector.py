"""The collector speaks Segment's HTTP API: the official client delivers through it, unmodified."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from intent.collector import create_collector_app
from intent.kafka import ensure_topics, producer
from intent.settings import Settings

pytestmark = pytest.mark.integration
KEY = "wk_test"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}


def track(message_id: str, **extra: object) -> dict:
    return {
        "type": "track",
        "event": "Product Viewed",
        "messageId": message_id,
        "anonymousId": "anon-1",
        "timestamp": "2026-01-28T11:00:00Z",
        "properties": {"category": "herbal tea", "price": 2.3},
        **extra,
    }


@pytest.fixture
async def collector(broker) -> AsyncIterator[tuple[TestClient, Settings]]:
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        broker_url=broker.url,
        events_topic=f"collect-{run}",
        identities_topic=f"ids-{run}",
        write_keys=KEY,
        collector_max_batch_bytes=100_000,
    )
    await ensure_topics(broker.bootstrap_servers, [settings.events_topic], 4)
    client = producer(broker.bootstrap_servers)
    await client.start()
    app, _ = create_collector_app(settings, client)
    http = TestClient(TestServer(app))
    await http.start_server()
    yield http, settings
    await http.close()
    await client.stop()


async def topic_records(settings: Settings, count: int, timeout: float = 30) -> list[tuple[bytes, dict]]:
    consumer = AIOKafkaConsumer(
        settings.events_topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[tuple[bytes, dict]] = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < count:
                for messages in (await consumer.getmany(timeout_ms=300)).values():
                    records += [(m.key, orjson.loads(m.value)) for m in messages]
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return records


async def test_a_call_without_a_known_write_key_is_refused(collector) -> None:
    http, _ = collector
    for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"wrong:").decode()}):
        response = await http.post("/v1/track", json=track("m1"), headers=headers)
        assert response.status == 401


async def test_a_batch_keeps_its_good_messages_and_says_why_each_bad_one_was_rejected(collector) -> None:
    http, settings = collector
    batch = [
        track("good-1"),
        track("bad-1", properties={"price": "free"}),
        "not an object",
        track("good-2"),
        {**track("bad-2"), "type": "alias"},
    ]
    response = await http.post("/v1/batch", json={"batch": batch}, headers=AUTH)
    answer = await response.json()
    assert response.status == 200 and answer["accepted"] == 2
    assert [(r["index"], r["reason"]) for r in answer["rejected"]] == [
        (1, "properties.price: expected a number, got str"),
        (2, "a message is a JSON object"),
        (4, "type: 'alias' is not one of ['identify', 'page', 'screen', 'track']"),
    ]
    records = await topic_records(settings, 2)
    assert [r["messageId"] for _, r in records] == ["good-1", "good-2"] or sorted(
        r["messageId"] for _, r in records
    ) == ["good-1", "good-2"]
    assert all(key == b"anon-1" for key, _ in records)


async def test_a_single_bad_message_is_a_400_with_its_reason(collector) -> None:
    http, _ = collector
    response = await http.post("/v1/track", json=track("x", timestamp="yesterday"), headers=AUTH)
    answer = await response.json()
    assert response.status == 400 and answer["message"].startswith("timestamp")


async def test_duplicates_are_acknowledged_but_sent_once(collector) -> None:
    http, settings = collector
    for _ in range(3):
        response = await http.post("/v1/track", json=track("same"), headers=AUTH)
        assert response.status == 200
    await http.post("/v1/track", json=track("other"), headers=AUTH)
    records = await topic_records(settings, 3, timeout=5)
    assert sorted(r["messageId"] for _, r in records) == ["other", "same"]


async def test_size_limits_are_enforced(collector) -> None:
    http, _ = collector
    big = track("big", properties={"name": "x" * 40_000})
    answer = await (await http.post("/v1/track", json=big, headers=AUTH)).json()
    assert answer["message"] == "a message is limited to 32768 bytes"
    huge = {"batch": [track(f"m{n}", properties={"name": "x" * 20_000}) for n in range(6)]}
    assert (await http.post("/v1/batch", json=huge, headers=AUTH)).status == 413


async def test_after_identify_the_anonymous_shoppers_events_carry_the_user(collector) -> None:
    http, settings = collector
    identify = {
        "type": "identify",
        "messageId": "id-1",
        "anonymousId": "anon-1",
        "userId": "user-9",
        "timestamp": "2026-01-28T11:00:00Z",
        "traits": {"segment": "coffee lovers"},
    }
    assert (await http.post("/v1/identify", json=identify, headers=AUTH)).status == 200
    assert (await http.post("/v1/track", json=track("after-login"), headers=AUTH)).status == 200
    records = dict((r["messageId"], (key, r)) for key, r in await topic_records(settings, 2))
    key, event = records["after-login"]
    assert key == b"user-9" and event["userId"] == "user-9" and event["anonymousId"] == "anon-1"


async def test_the_official_segment_client_delivers_through_the_collector(collector) -> None:
    from segment.analytics import Client

    http, settings = collector
    client = Client(write_key=KEY, host=str(http.make_url("")).rstrip("/"), sync_mode=True, max_retries=1)
    sent = [
        ("Product Viewed", {"product_id": "P0036", "category": "herbal tea", "price": 2.3}),
        ("Products Searched", {"query": "mint tea"}),
        ("Order Completed", {"products": [{"product_id": "P0036"}]}),
    ]
    for name, properties in sent:
        await asyncio.to_thread(
            client.track, user_id="ada", event=name, properties=properties, context={"sessionId": "s1"}
        )
    await asyncio.to_thread(client.page, user_id="ada", name="Home")
    records = [r for _, r in await topic_records(settings, 4)]
    tracked = [r for r in records if r["event"] != "Page Viewed"]
    assert [(r["event"], r["properties"]) for r in tracked] == [(n, p) for n, p in sent]
    assert all(r["userId"] == "ada" and r["context"]["library"]["name"] == "analytics-python" for r in tracked)
    assert [r["name"] for r in records if r["event"] == "Page Viewed"] == ["Home"]


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
message_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["track", "page", "identify", "x"]) | json_values,
        "event": json_values,
        "messageId": json_values,
        "userId": json_values,
        "anonymousId": json_values,
        "timestamp": json_values,
        "properties": json_values,
        "context": json_values,
    },
)


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(json_values, message_like, st.fixed_dictionaries({"batch": st.lists(message_like, max_size=5)})))
async def test_any_json_body_gets_an_answer_with_a_reason_never_a_server_error(collector, body) -> None:
    http, _ = collector
    response = await http.post(
        "/v1/batch" if isinstance(body, dict) and "batch" in body else "/v1/track",
        data=orjson.dumps(body),
        headers=AUTH,
    )
    answer = await response.json()
    assert response.status in (200, 400, 413)
    if response.status == 400:
        assert answer["message"]
    for rejection in answer.get("rejected", []):
        assert rejection["reason"]
