from __future__ import annotations

from typing import Any

import orjson
import pytest

from intent.events import OTHER_EVENT, InvalidEvent, ShopperEvent, check_not_ahead, parse_event

VALID: dict[str, Any] = {
    "type": "track",
    "event": "Product Viewed",
    "messageId": "m-1",
    "userId": "u-42",
    "anonymousId": "a-9",
    "timestamp": "2026-01-05T08:00:00.000Z",
    "properties": {
        "product_id": "P0001",
        "sku": "SKU-00001",
        "name": "Colombia Supremo Whole Beans 500g",
        "category": "Coffee Beans",
        "brand": "Kindred",
        "price": 10.56,
        "quantity": 1,
    },
    "context": {
        "sessionId": "s-1",
        "device": {"type": "Mobile"},
        "channel": "app",
        "locale": "en-GB",
        "timezone": "Europe/London",
        "consent": {"categoryPreferences": {"Personalization": False}},
        "traits": {"segment": "coffee lovers"},
    },
}


def with_changes(**changes: Any) -> bytes:
    body = orjson.loads(orjson.dumps(VALID))
    for path, value in changes.items():
        target = body
        *parents, leaf = path.split("__")
        for parent in parents:
            target = target[parent]
        if value is ...:
            del target[leaf]
        else:
            target[leaf] = value
    return orjson.dumps(body)


def test_a_complete_event_parses_into_every_field() -> None:
    event = parse_event(orjson.dumps(VALID))
    assert event == ShopperEvent(
        message_id="m-1",
        event_type="Product Viewed",
        name="Product Viewed",
        timestamp=1767600000.0,
        anonymous_id="a-9",
        user_id="u-42",
        session_id="s-1",
        product_id="P0001",
        sku="SKU-00001",
        product_name="Colombia Supremo Whole Beans 500g",
        category="coffee beans",
        brand="Kindred",
        price=10.56,
        quantity=1,
        device="mobile",
        channel="app",
        locale="en-GB",
        timezone="Europe/London",
        personalization_allowed=False,
        segment="coffee lovers",
    )
    assert event.shopper_id == "u-42"


def test_the_compact_record_round_trips() -> None:
    event = parse_event(with_changes(event="Order Completed", properties={"products": [{"product_id": "P1"}]}))
    assert event.products == ("P1",)
    assert ShopperEvent.from_record(orjson.loads(orjson.dumps(event.to_record()))) == event


def test_unknown_event_names_are_kept_as_other() -> None:
    event = parse_event(with_changes(event="Coupon Applied"))
    assert (event.event_type, event.name) == (OTHER_EVENT, "Coupon Applied")


def test_numeric_ids_are_their_decimal_strings() -> None:
    event = parse_event(with_changes(userId=42, properties__product_id=7))
    assert (event.user_id, event.product_id) == ("42", "7")


def test_missing_message_id_takes_the_fallback() -> None:
    assert parse_event(with_changes(messageId=...), "shopper-events/0/17").message_id == "shopper-events/0/17"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "an event is a JSON object, got list"),
        (with_changes(type="identify"), "type: only 'track' calls are shopper events"),
        (with_changes(event=...), "event: required"),
        (with_changes(event=12), "event: expected a string, got int"),
        (with_changes(userId=..., anonymousId=...), "anonymousId or userId: at least one is required"),
        (with_changes(messageId=...), "messageId: required"),
        (with_changes(timestamp=...), "timestamp: required"),
        (with_changes(timestamp="yesterday"), "timestamp: not ISO-8601"),
        (with_changes(timestamp=1767600000), "timestamp: expected an ISO-8601 string, got int"),
        (with_changes(properties="coffee"), "properties: expected an object, got str"),
        (with_changes(properties__price="10.56"), "properties.price: expected a number, got str"),
        (with_changes(properties__price=-1), "properties.price: expected a finite number >= 0"),
        (with_changes(properties__price=True), "properties.price: expected a number, got bool"),
        (with_changes(properties__quantity=1.5), "properties.quantity: expected a whole number >= 0"),
        (with_changes(properties__products={"a": 1}), "properties.products: expected a list"),
        (with_changes(context__device="phone"), "context.device: expected an object, got str"),
        (with_changes(properties__category="x" * 600), "properties.category: longer than 512"),
        (
            with_changes(context__consent__categoryPreferences={"Personalization": "yes"}),
            "context.consent.categoryPreferences.Personalization: expected true or false",
        ),
    ],
)
def test_invalid_events_are_rejected_with_a_precise_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as raised:
        parse_event(raw)
    assert raised.value.reason.startswith(reason)


def test_a_naive_timestamp_is_taken_as_utc() -> None:
    assert parse_event(with_changes(timestamp="2026-01-05T08:00:00")).timestamp == 1767600000.0


def test_an_event_dated_too_far_ahead_of_the_workers_clock_is_rejected_with_how_far() -> None:
    now = parse_event(orjson.dumps(VALID)).timestamp  # the worker's clock, injected
    forged = parse_event(with_changes(timestamp="2999-01-01T00:00:00Z"))
    with pytest.raises(InvalidEvent) as raised:
        check_not_ahead(forged, now, max_ahead_seconds=300)
    ahead = forged.timestamp - now
    assert raised.value.reason == (
        f"timestamp: 2999-01-01T00:00:00.000Z is {ahead:.0f} s ahead of the worker's clock "
        "(2026-01-05T08:00:00.000Z), over the 300 s allowed (INTENT_MAX_EVENT_AHEAD_SECONDS)"
    )
    check_not_ahead(parse_event(with_changes(timestamp="2026-01-05T08:05:00Z")), now, 300)  # a small skew
    check_not_ahead(parse_event(with_changes(timestamp="2019-10-01T00:00:00Z")), now, 300)  # history


@pytest.mark.parametrize(
    "timestamp", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.9999999Z"]
)
def test_a_timestamp_outside_the_years_1_to_9999_in_utc_is_rejected_not_a_crash(timestamp: str) -> None:
    # each one is valid ISO-8601, but an instant a dead letter or an IntentChanged cannot show again:
    # the first one, dead-lettered as ahead of the clock, made the detection agent crash on its reason
    with pytest.raises(InvalidEvent) as raised:
        parse_event(with_changes(timestamp=timestamp))
    assert raised.value.reason == f"timestamp: {timestamp!r} is outside the years 1 to 9999 in UTC"
