"""The shopper event: a Segment-style `track` call as JSON, parsed and validated in one pass.

This is the first stage of the flow. Anything that is not a usable event raises `InvalidEvent` with
a precise reason; the app sends such input to the dead-letter topic and carries on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

# Segment Ecommerce v2 names the model knows; any other event name is kept as OTHER_EVENT.
EVENT_TYPES: tuple[str, ...] = (
    "Product Viewed",
    "Products Searched",
    "Product Added",
    "Product Removed",
    "Cart Viewed",
    "Checkout Started",
    "Order Completed",
)
OTHER_EVENT = "other"
_KNOWN_EVENTS = frozenset(EVENT_TYPES)
_MAX_TEXT = 512


class InvalidEvent(ValueError):
    """Input that cannot be processed; `reason` says exactly why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ShopperEvent:
    message_id: str
    event_type: str  # one of EVENT_TYPES, or OTHER_EVENT
    name: str  # the event name as sent
    timestamp: float  # seconds since the epoch, UTC
    anonymous_id: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    product_id: str | None = None
    sku: str | None = None
    product_name: str | None = None
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    quantity: int | None = None
    query: str | None = None
    products: tuple[str, ...] = ()  # product ids of an order
    device: str | None = None
    channel: str | None = None
    locale: str | None = None
    timezone: str | None = None
    personalization_allowed: bool | None = None  # None: the event said nothing about consent
    segment: str | None = None

    @property
    def shopper_id(self) -> str:
        """The key that orders a shopper's events: the known user, else the anonymous visitor."""
        return self.user_id or self.anonymous_id or ""

    def to_record(self) -> dict[str, Any]:
        """A compact dict (no empty fields) that `from_record` turns back into the same event."""
        record = {}
        for key in self.__slots__:
            value = getattr(self, key)
            if value is not None and value != ():
                record[key] = value
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ShopperEvent:
        if "products" in record:
            record = {**record, "products": tuple(record["products"])}
        return cls(**record)


def parse_event(raw: bytes | str, message_id_fallback: str | None = None) -> ShopperEvent:
    """Parse and validate one JSON event. Raises InvalidEvent with the reason.

    Without a `messageId` the event gets `message_id_fallback` (the app passes the Kafka
    topic/partition/offset), so re-processing the same input yields the same ids downstream.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidEvent(f"not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise InvalidEvent(f"an event is a JSON object, got {type(body).__name__}")
    return event_from_dict(body, message_id_fallback)


def event_from_dict(body: dict[str, Any], message_id_fallback: str | None = None) -> ShopperEvent:
    call_type = body.get("type", "track")
    if call_type != "track":
        raise InvalidEvent(f"type: only 'track' calls are shopper events, got {call_type!r}")
    name = _text(body, "event", "event")
    if name is None:
        raise InvalidEvent("event: required")
    anonymous_id = _identifier(body, "anonymousId", "anonymousId")
    user_id = _identifier(body, "userId", "userId")
    if anonymous_id is None and user_id is None:
        raise InvalidEvent("anonymousId or userId: at least one is required")
    message_id = _identifier(body, "messageId", "messageId") or message_id_fallback
    if message_id is None:
        raise InvalidEvent("messageId: required")
    timestamp = parse_time(body.get("timestamp"))

    properties = _object(body, "properties")
    context = _object(body, "context")
    device = _object(context, "device", "context.device")
    traits = _object(context, "traits", "context.traits")
    consent = _object(context, "consent", "context.consent")
    preferences = _object(consent, "categoryPreferences", "context.consent.categoryPreferences")

    return ShopperEvent(
        message_id=message_id,
        event_type=name if name in _KNOWN_EVENTS else OTHER_EVENT,
        name=name,
        timestamp=timestamp,
        anonymous_id=anonymous_id,
        user_id=user_id,
        session_id=_identifier(context, "sessionId", "context.sessionId"),
        product_id=_identifier(properties, "product_id", "properties.product_id"),
        sku=_identifier(properties, "sku", "properties.sku"),
        product_name=_text(properties, "name", "properties.name"),
        category=_category(properties),
        brand=_text(properties, "brand", "properties.brand"),
        price=_price(properties),
        quantity=_quantity(properties),
        query=_text(properties, "query", "properties.query"),
        products=_order_products(properties),
        device=_lower(_text(device, "type", "context.device.type")),
        channel=_lower(_text(context, "channel", "context.channel")),
        locale=_text(context, "locale", "context.locale"),
        timezone=_text(context, "timezone", "context.timezone"),
        personalization_allowed=_personalization(preferences),
        segment=_text(traits, "segment", "context.traits.segment"),
    )


def _object(parent: dict[str, Any], key: str, path: str | None = None) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent(f"{path or key}: expected an object, got {type(value).__name__}")
    return value


def _text(parent: dict[str, Any], key: str, path: str) -> str | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"{path}: expected a string, got {type(value).__name__}")
    if len(value) > _MAX_TEXT:
        raise InvalidEvent(f"{path}: longer than {_MAX_TEXT} characters")
    return value or None


def _identifier(parent: dict[str, Any], key: str, path: str) -> str | None:
    # Platforms often send numeric ids; they are the same id as their decimal string.
    value = parent.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _text(parent, key, path)


def _lower(value: str | None) -> str | None:
    return value.lower() if value else None


def parse_time(value: Any, field: str = "timestamp") -> float:
    """An ISO-8601 time (UTC if it names no zone) as seconds since the epoch; `field` names it in errors."""
    if value is None:
        raise InvalidEvent(f"{field}: required (ISO-8601)")
    if not isinstance(value, str):
        raise InvalidEvent(f"{field}: expected an ISO-8601 string, got {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(f"{field}: not ISO-8601: {value[:40]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    timestamp = moment.timestamp()
    try:  # an instant `iso_time` can show again (dead letters and IntentChanged do), not year 0 or 10000
        datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, ValueError, OSError):
        raise InvalidEvent(f"{field}: {value[:40]!r} is outside the years 1 to 9999 in UTC") from None
    return timestamp


def check_not_ahead(event: ShopperEvent, now: float, max_ahead_seconds: float) -> None:
    """Raise InvalidEvent when `event` is dated more than `max_ahead_seconds` after `now` (the
    worker's clock). Event time drives expiry, so an event dated years ahead would make every
    window look idle; a replay of history is never ahead, so it passes."""
    ahead = event.timestamp - now
    if ahead > max_ahead_seconds:
        raise InvalidEvent(
            f"timestamp: {iso_time(event.timestamp)} is {ahead:.0f} s ahead of the worker's clock "
            f"({iso_time(now)}), over the {max_ahead_seconds:g} s allowed (INTENT_MAX_EVENT_AHEAD_SECONDS)"
        )


def normalise_category(name: str) -> str:
    """Categories are compared as events carry them: stripped and lower-cased, so a merchant's
    `COFFEE` in a product feed, a category map or an event is one category."""
    return name.strip().lower()


def _category(properties: dict[str, Any]) -> str | None:
    category = _text(properties, "category", "properties.category")
    return normalise_category(category) if category else None


def _price(properties: dict[str, Any]) -> float | None:
    value = properties.get("price")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(f"properties.price: expected a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise InvalidEvent(f"properties.price: expected a finite number >= 0, got {value}")
    return float(value)


def _quantity(properties: dict[str, Any]) -> int | None:
    value = properties.get("quantity")
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidEvent(f"properties.quantity: expected a whole number >= 0, got {value!r}")
    return value


def _order_products(properties: dict[str, Any]) -> tuple[str, ...]:
    products = properties.get("products")
    if products is None:
        return ()
    if not isinstance(products, list):
        raise InvalidEvent(f"properties.products: expected a list, got {type(products).__name__}")
    ids = []
    for position, product in enumerate(products):
        if not isinstance(product, dict):
            raise InvalidEvent(f"properties.products[{position}]: expected an object")
        product_id = _identifier(product, "product_id", f"properties.products[{position}].product_id")
        if product_id:
            ids.append(product_id)
    return tuple(ids)


def _personalization(preferences: dict[str, Any]) -> bool | None:
    for key, value in preferences.items():
        if key.lower() in ("personalization", "personalisation"):
            if not isinstance(value, bool):
                raise InvalidEvent(f"context.consent.categoryPreferences.{key}: expected true or false")
            return value
    return None


def iso_time(timestamp: float) -> str:
    """Seconds since the epoch as the ISO-8601 UTC form the event format uses."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
