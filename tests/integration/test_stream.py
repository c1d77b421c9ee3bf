"""The streaming detector on a real broker: worker processes, real topics, kill and restart."""

from __future__ import annotations

import asyncio
import base64
import signal
import time

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from intent.events import event_from_dict, iso_time
from intent.kafka import wait_for_lag_zero
from intent.model import IntentModel
from intent.replay import replay
from intent.settings import get_settings
from intent.simulate import Simulator, coffee_tea_cold_story
from intent.stores import DictStore
from intent.tracking import IntentTracker
from intent.window import WindowPolicy
from tests.integration.conftest import Deployment, read_until

pytestmark = pytest.mark.integration

STORY_SHOPPER = "story-coffee-tea-cold"
JOIN_AND_CATCH_UP_SECONDS = 150.0


def story_lines() -> list[bytes]:
    return [orjson.dumps(e) for e in coffee_tea_cold_story(Simulator(seed=0).world).events]


def cold_shift_seen(records: list[dict]) -> bool:
    return any(r["shopper_id"] == STORY_SHOPPER and r["to_intent"]["id"] == "cold_flu_care" for r in records)


def cold_shift(records: list[dict]) -> dict:
    return next(r for r in records if r["shopper_id"] == STORY_SHOPPER and r["to_intent"]["id"] == "cold_flu_care")


async def test_the_story_produces_the_expected_intent_changed_on_the_topic(deployment: Deployment) -> None:
    deployment.start_worker()
    await replay(story_lines(), deployment.broker.bootstrap_servers, deployment.events_topic)
    records = await read_until(
        deployment.broker.bootstrap_servers, deployment.changes_topic, cold_shift_seen, JOIN_AND_CATCH_UP_SECONDS
    )
    assert cold_shift_seen(records), deployment.logs()
    change = cold_shift(records)
    assert change["from_intent"]["id"] == "coffee_ritual"
    assert change["to_intent"]["sensitive"] is True
    assert change["scope"] == "shopper" and change["user_id"] == STORY_SHOPPER
    assert change["trigger_message_id"] == f"{STORY_SHOPPER}-s4-e2"  # the third tea event
    assert change["evidence"][-1]["category"] == "mint tea"
    assert change["segment"] == "coffee lovers"
    assert change["model_version"] == IntentModel.load(get_settings().model_dir).version
    assert change["top_intents"][0]["id"] == "cold_flu_care"


async def test_bad_events_go_to_the_dead_letter_topic_and_the_events_around_them_are_processed(
    deployment: Deployment,
) -> None:
    lines = story_lines()
    trigger = next(i for i, line in enumerate(lines) if b"s4-e2" in line)
    bad = [
        b"not json at all",
        b'["an", "array"]',
        orjson.dumps({**orjson.loads(lines[trigger]), "messageId": "typed", "properties": {"price": "2.30"}}),
        orjson.dumps({"event": "Product Viewed", "timestamp": "2026-01-28T11:00:00Z"}),
        orjson.dumps({**orjson.loads(lines[trigger]), "messageId": "big", "padding": "x" * 5000}),
    ]
    # Around the very event that triggers the shift: it must still be processed.
    lines = lines[:trigger] + bad + lines[trigger:]
    deployment.start_worker(INTENT_MAX_EVENT_BYTES="4096")
    await replay(lines, deployment.broker.bootstrap_servers, deployment.events_topic)

    bootstrap = deployment.broker.bootstrap_servers
    dead = await read_until(
        bootstrap, deployment.dead_letter_topic, lambda r: len(r) >= len(bad), JOIN_AND_CATCH_UP_SECONDS
    )
    changes = await read_until(bootstrap, deployment.changes_topic, cold_shift_seen, 60)
    assert cold_shift_seen(changes), deployment.logs()
    assert len(dead) == len(bad), deployment.logs()
    reason_of = {base64.b64decode(r["original_base64"]): r["reason"] for r in dead}
    assert set(reason_of) == set(bad)
    expected = [
        "not valid JSON",
        "an event is a JSON object, got list",
        "properties.price: expected a number, got str",
        "anonymousId or userId: at least one is required",
        f"event of {len(bad[4])} bytes is over the limit of 4096",
    ]
    assert [reason_of[raw] for raw in bad] == [
        reason_of[raw] if reason_of[raw].startswith(prefix) else prefix
        for raw, prefix in zip(bad, expected, strict=True)
    ]
    for record in dead:
        assert record["topic"] == deployment.events_topic
        assert record["partition"] >= 0 and record["offset"] >= 0 and record["rejected_at"]

    # and the operator sees it: the worker's own metrics count what happened
    async with aiohttp.ClientSession(f"http://127.0.0.1:{deployment.web_ports[0]}") as http:
        async with http.get("/metrics") as response:
            metrics = await response.text()
        async with http.get("/readyz") as response:
            readiness = response.status, await response.json()
    assert f"intent_events_in_total {float(len(lines))}" in metrics
    assert f'intent_dead_letters_total{{topic="{deployment.dead_letter_topic}"}} 5.0' in metrics
    assert 'intent_events_rejected_total{reason="properties.price"} 1.0' in metrics
    assert 'intent_changes_total{intent="cold_flu_care"} 1.0' in metrics
    assert readiness == (
        200,
        {"status": "ready", "checks": {"model_loaded": True, "broker_connected": True, "partitions_assigned": True}},
    )


async def test_an_event_from_the_future_is_dead_lettered_and_every_shoppers_window_survives_the_sweeps(
    deployment: Deployment,
) -> None:
    # the reproduction: 20 shoppers with 5 events each, then one call dated 2999-01-01
    now = time.time()
    calls = [
        {
            "event": "Product Viewed",
            "userId": f"shopper-{shopper}",
            "messageId": f"shopper-{shopper}-{number}",
            "timestamp": iso_time(now - 3600 + 60 * number),
            "properties": {"category": "Coffee Beans"},
            "context": {"sessionId": f"shopper-{shopper}-visit"},
        }
        for shopper in range(20)
        for number in range(5)
    ]
    forged = orjson.dumps(
        {**calls[0], "userId": "intruder", "messageId": "forged", "timestamp": "2999-01-01T00:00:00Z"}
    )
    bootstrap = deployment.broker.bootstrap_servers
    deployment.start_worker(INTENT_EXPIRY_CHECK_SECONDS="1")
    await replay([*map(orjson.dumps, calls), forged], bootstrap, deployment.events_topic)

    dead = await read_until(bootstrap, deployment.dead_letter_topic, lambda r: len(r) >= 1, JOIN_AND_CATCH_UP_SECONDS)
    assert [base64.b64decode(record["original_base64"]) for record in dead] == [forged], deployment.logs()
    reason = dead[0]["reason"]
    assert reason.startswith("timestamp: 2999-01-01T00:00:00.000Z is ") and reason.endswith(
        "over the 300 s allowed (INTENT_MAX_EVENT_AHEAD_SECONDS)"
    )
    await wait_for_lag_zero(bootstrap, deployment.app_id, deployment.events_topic, JOIN_AND_CATCH_UP_SECONDS)
    await asyncio.sleep(3)  # three expiry sweeps
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{deployment.web_ports[0]}") as http,
        http.get("/metrics") as response,
    ):
        metrics = await response.text()
    assert "intent_active_sessions 20.0" in metrics and "intent_active_shoppers 20.0" in metrics, deployment.logs()
    assert 'intent_events_rejected_total{reason="timestamp"} 1.0' in metrics


async def test_a_killed_worker_is_replaced_and_a_shift_that_needs_earlier_events_is_still_detected(
    deployment: Deployment,
) -> None:
    lines = story_lines()
    first_tea = next(i for i, line in enumerate(lines) if b'"herbal tea"' in line)
    bootstrap = deployment.broker.bootstrap_servers
    first = deployment.start_worker()
    await replay(lines[: first_tea + 1], bootstrap, deployment.events_topic)
    await wait_for_lag_zero(bootstrap, deployment.app_id, deployment.events_topic, JOIN_AND_CATCH_UP_SECONDS)
    first.send_signal(signal.SIGKILL)
    first.wait()

    deployment.start_worker()
    await replay(lines[first_tea + 1 :], bootstrap, deployment.events_topic)
    records = await read_until(bootstrap, deployment.changes_topic, cold_shift_seen, JOIN_AND_CATCH_UP_SECONDS)
    assert cold_shift_seen(records), deployment.logs()
    # "from coffee" is only known to a worker that restored the shopper's window from the changelog.
    assert cold_shift(records)["from_intent"]["id"] == "coffee_ritual"


async def test_killing_a_worker_mid_stream_loses_no_intent_change_and_repeats_none_differently(
    deployment: Deployment,
) -> None:
    simulator = Simulator(seed=31)
    people = [coffee_tea_cold_story(simulator.world), *simulator.shoppers(40)]
    events = sorted((e for p in people for e in p.events), key=lambda e: e["timestamp"])
    lines = [orjson.dumps(e) for e in events]
    bootstrap = deployment.broker.bootstrap_servers

    first = deployment.start_worker()
    await replay(lines[: len(lines) // 2], bootstrap, deployment.events_topic)
    await read_until(bootstrap, deployment.changes_topic, lambda r: len(r) >= 5, JOIN_AND_CATCH_UP_SECONDS)
    first.send_signal(signal.SIGKILL)
    first.wait()
    deployment.start_worker()
    await replay(lines[len(lines) // 2 :], bootstrap, deployment.events_topic)
    await wait_for_lag_zero(bootstrap, deployment.app_id, deployment.events_topic, JOIN_AND_CATCH_UP_SECONDS)

    model = IntentModel.load(get_settings().model_dir)
    offline = IntentTracker(model, WindowPolicy(), DictStore(), DictStore())
    expected = {change["id"] for change in offline.process([event_from_dict(e) for e in events])}
    records = await read_until(bootstrap, deployment.changes_topic, lambda r: {c["id"] for c in r} >= expected, 30)
    assert {c["id"] for c in records} == expected, deployment.logs()


async def test_reprocessing_the_same_input_yields_the_same_intent_changed_ids(deployment: Deployment, tmp_path) -> None:
    bootstrap = deployment.broker.bootstrap_servers
    await replay(story_lines(), bootstrap, deployment.events_topic)
    deployment.start_worker()
    first = await read_until(bootstrap, deployment.changes_topic, cold_shift_seen, JOIN_AND_CATCH_UP_SECONDS)
    # A second deployment (another consumer group) re-reads the same input from the start.
    again = Deployment(deployment.broker, tmp_path / "again")
    again.root.mkdir()
    again.start_worker(INTENT_EVENTS_TOPIC=deployment.events_topic)
    try:
        second = await read_until(bootstrap, again.changes_topic, cold_shift_seen, JOIN_AND_CATCH_UP_SECONDS)
    finally:
        again.stop_all()
    assert cold_shift_seen(first) and cold_shift_seen(second)
    assert [c["id"] for c in first] == [c["id"] for c in second]


async def test_events_keyed_otherwise_are_re_keyed_by_shopper_before_detection(deployment: Deployment) -> None:
    deployment.start_worker(INTENT_REPARTITION_INPUT="true")
    producer = AIOKafkaProducer(bootstrap_servers=deployment.broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for line in story_lines():  # keyed by something that is not the shopper (a device, say)
            await producer.send_and_wait(deployment.events_topic, line, key=b"device-42")
    finally:
        await producer.stop()
    bootstrap = deployment.broker.bootstrap_servers
    records = await read_until(bootstrap, deployment.changes_topic, cold_shift_seen, JOIN_AND_CATCH_UP_SECONDS)
    assert cold_shift_seen(records), deployment.logs()
    assert cold_shift(records)["from_intent"]["id"] == "coffee_ritual"
    consumer = AIOKafkaConsumer(
        f"{deployment.app_id}-events-by-shopper", bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()
    keys = [message.key for messages in batches.values() for message in messages]
    assert keys and set(keys) == {STORY_SHOPPER.encode()}
