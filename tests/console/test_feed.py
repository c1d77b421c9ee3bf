"""The console's live feed: what it counts and lists from the records of the topics it reads."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord

from intent.console.feed import FeedTopics, LiveFeed, attempt_record
from intent.webhooks.delivery import Attempt
from intent.webhooks.subscriptions import Subscription

TOPICS = FeedTopics("changes", "events-dlq", "webhooks-dlq", "webhook-attempts")
LABELS = {"coffee_ritual": "Coffee ritual", "cold_flu_care": "Cold & flu care", "pet_care": "Pet care"}
NOW = 1_800_000_000.0


def record(topic: str, value: dict[str, Any] | bytes, at: float = NOW) -> ConsumerRecord[bytes, bytes]:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return ConsumerRecord(topic, 0, 0, int(at * 1000), 0, None, raw, None, 0, len(raw), [])


def change(change_id: str, to_intent: str, consent: bool | None = True, sensitive: bool = False) -> dict[str, Any]:
    return {
        "id": change_id,
        "shopper_id": "story",
        "scope": "shopper",
        "from_intent": {"id": "coffee_ritual", "label": "Coffee ritual", "confidence": 0.01},
        "to_intent": {"id": to_intent, "label": LABELS[to_intent], "confidence": 0.97, "sensitive": sensitive},
        "evidence": [{"event": "Product Viewed", "name": "Peppermint Tea x20"}],
        "personalization_allowed": consent,
        "event_time": "2026-01-28T11:01:30.000Z",
        "detected_at": "2026-12-01T07:28:23.949Z",
        "holdout": False,
        "suggestions": [{"product_id": "P1"}, {"product_id": "P2"}],
    }


def feed() -> LiveFeed:
    live = LiveFeed("unused:9092", TOPICS, 1, history_seconds=3600, intent_labels=LABELS, clock=lambda: NOW)
    live.since = NOW - 3600
    return live


def test_a_change_is_counted_under_its_intent_and_listed_with_its_trigger() -> None:
    live = feed()
    live.apply(record("changes", change("ic_1", "cold_flu_care", sensitive=True)))
    view = live.view()
    assert view["totals"]["changes"] == 1
    assert view["by_intent"] == [{"id": "cold_flu_care", "label": "Cold & flu care", "count": 1}]
    (listed,) = view["changes"]
    assert listed["to_intent"] == {"id": "cold_flu_care", "label": "Cold & flu care", "confidence": 0.97}
    assert listed["from_intent"] == {"id": "coffee_ritual", "label": "Coffee ritual"}
    assert listed["trigger"] == "Peppermint Tea x20" and listed["suggestions"] == 2


def test_a_change_emitted_again_with_the_same_id_is_counted_once() -> None:
    live = feed()
    for _ in range(2):
        live.apply(record("changes", change("ic_1", "pet_care")))
    assert live.view()["totals"]["changes"] == 1 and len(live.view()["changes"]) == 1


def test_a_change_the_shoppers_consent_withholds_is_counted_but_never_listed() -> None:
    live = feed()
    live.apply(record("changes", change("ic_1", "cold_flu_care", consent=None, sensitive=True)))
    live.apply(record("changes", change("ic_2", "pet_care", consent=False)))
    view = live.view()
    assert view["totals"]["changes"] == 2 and view["totals"]["withheld_for_consent"] == 2
    assert view["changes"] == []


def test_records_older_than_the_history_are_skipped() -> None:
    live = feed()
    live.apply(record("changes", change("ic_old", "pet_care"), at=NOW - 7200))
    assert live.view()["totals"]["changes"] == 0


def test_a_dead_letter_shows_its_reason_and_the_start_of_the_rejected_event() -> None:
    live = feed()
    original = b'{"event": "Product Viewed", "properties": {"price": "cheap"}}' + b" " * 500
    letter = {
        "reason": "properties.price: expected a number, got str",
        "topic": "events",
        "partition": 2,
        "offset": 226,
        "key": "broken-1",
        "original_base64": base64.b64encode(original).decode(),
        "rejected_at": "2026-12-01T07:28:23.949Z",
    }
    live.apply(record("events-dlq", letter))
    (listed,) = live.view()["dead_letters"]
    assert listed["reason"] == letter["reason"] and listed["key"] == "broken-1"
    assert listed["bytes"] == len(original) and listed["excerpt"] == original[:160].decode()
    assert live.view()["totals"]["dead_letters"] == 1


def test_webhook_attempts_give_each_subscription_its_latest_outcomes_and_failures_are_listed() -> None:
    live = feed()
    subscription = Subscription.create("https://shop.example.com/hooks", (), None)
    payload = change("ic_1", "pet_care")
    outcomes = [Attempt(NOW, 0.2, error="timed out after 15 s"), Attempt(NOW + 5, 0.01, status=204)]
    for attempt in outcomes:
        live.apply(record("webhook-attempts", attempt_record(subscription, "msg_1", payload, attempt)))
    newest, oldest = live.outcomes(subscription.id)
    assert newest["delivered"] and newest["status"] == 204
    assert not oldest["delivered"] and oldest["error"] == "timed out after 15 s" and oldest["intent"] == "Pet care"
    view = live.view()
    assert view["totals"]["webhook_attempts"] == 2 and view["totals"]["webhook_failed_attempts"] == 1
    assert [f["error"] for f in view["webhook_failures"]] == ["timed out after 15 s"]


def test_an_attempt_record_carries_neither_the_payload_nor_the_shopper() -> None:
    subscription = Subscription.create("https://shop.example.com/hooks?token=secret", (), None)
    raw = attempt_record(subscription, "msg_1", change("ic_1", "pet_care"), Attempt(NOW, 0.1, status=200))
    assert b"story" not in raw and b"Peppermint" not in raw and b"secret" not in raw
    assert orjson.loads(raw)["change_id"] == "ic_1"


def test_a_webhook_dead_letter_shows_its_endpoint_and_last_outcome() -> None:
    live = feed()
    letter = {
        "webhook_id": "msg_1",
        "subscription_id": "sub_1",
        "url": "https://shop.example.com/hooks?<redacted>",
        "payload": change("ic_1", "pet_care"),
        "attempts": [{"status": 500, "error": None}, {"status": None, "error": "timed out after 15 s"}],
        "dead_lettered_at": "2026-12-01T07:28:23.949Z",
    }
    live.apply(record("webhooks-dlq", letter))
    (listed,) = live.view()["webhook_dead_letters"]
    assert listed["attempts"] == 2 and listed["last_error"] == "timed out after 15 s"
    assert listed["intent"] == "Pet care" and listed["url"].endswith("?<redacted>")


def test_a_view_after_a_sequence_number_holds_only_what_came_later_and_the_counts_of_all() -> None:
    live = feed()
    live.apply(record("changes", change("ic_1", "pet_care")))
    seen = live.view()["seq"]
    live.apply(record("changes", change("ic_2", "coffee_ritual")))
    later = live.view(after=seen)
    assert [c["id"] for c in later["changes"]] == ["ic_2"]
    assert later["totals"]["changes"] == 2 and len(later["by_intent"]) == 2


def test_an_unreadable_record_is_skipped_and_the_feed_goes_on() -> None:
    live = feed()
    live.apply(record("changes", b"not json"))
    live.apply(record("changes", {"id": "ic_1"}))  # no to_intent
    live.apply(record("changes", change("ic_2", "pet_care")))
    assert live.view()["totals"]["changes"] == 1


def test_a_change_triggered_by_an_unnamed_product_shows_the_event_and_its_category() -> None:
    live = feed()
    unnamed = {**change("ic_1", "pet_care"), "evidence": [{"event": "Product Added", "category": "cakes"}]}
    live.apply(record("changes", unnamed))
    assert live.view()["changes"][0]["trigger"] == "Product Added (cakes)"
