"""Baskets: a retailer's purchase log as training and evaluation read it (one record per basket).

The stream sees a basket as a visit of `Product Added` events followed by `Order Completed`
(`intent replay --format completejourney`); training and the next-basket evaluation read the same
log as these records, built by the same loader, so both sides agree on what a basket holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from intent.datasets.common import track


@dataclass(frozen=True, slots=True)
class LineItem:
    product_id: str
    category: str | None  # the merchant's own category name (Complete Journey: `product_category`)
    product_type: str | None
    brand: str | None
    price: float | None  # per unit
    quantity: int


@dataclass(frozen=True, slots=True)
class Basket:
    shopper_id: str  # the stream's key: `userId`
    basket_id: str
    timestamp: float  # seconds since the epoch, UTC
    items: tuple[LineItem, ...]
    segment: str | None  # demographic group, where the retailer knows it

    @property
    def categories(self) -> frozenset[str]:
        """The categories the basket holds (uncategorised line items left out)."""
        return frozenset(item.category for item in self.items if item.category is not None)

    @property
    def products(self) -> frozenset[str]:
        return frozenset(item.product_id for item in self.items)


def visit_events(baskets: Iterable[Basket]) -> Iterator[dict[str, Any]]:
    """The visits baskets are to the stream, in the order given: per basket, one `Product Added` per
    line item, a second apart, then `Order Completed` a second after the last. A basket that would
    start before the same shopper's previous order ended (logs stamp baskets to the second) starts a
    second after it, so each shopper's events stay in order. Replay and training both read baskets
    through this, so the model learns from exactly the events the worker will see."""
    order_times: dict[str, float] = {}  # shopper -> when their latest order completed
    for basket in baskets:
        start = max(basket.timestamp, order_times.get(basket.shopper_id, float("-inf")) + 1.0)
        context: dict[str, Any] = {
            "sessionId": basket.basket_id,
            # Purchase logs carry no consent field; a retailer replaying its own logs has it.
            "consent": {"categoryPreferences": {"Personalization": True}},
        }
        if basket.segment is not None:
            context["traits"] = {"segment": basket.segment}
        identity = {"userId": basket.shopper_id, "context": context}
        for position, item in enumerate(basket.items):
            properties = _present(
                product_id=item.product_id,
                category=item.category,
                product_type=item.product_type,
                brand=item.brand,
                price=item.price,
                quantity=item.quantity,
            )
            yield track("Product Added", f"{basket.basket_id}-{position}", _utc(start + position), properties, identity)
        order_times[basket.shopper_id] = start + len(basket.items)
        order = {
            "order_id": basket.basket_id,
            "revenue": round(sum(line_total(item) for item in basket.items), 2),
            "products": [
                _present(product_id=item.product_id, category=item.category, price=item.price, quantity=item.quantity)
                for item in basket.items
            ],
        }
        yield track(
            "Order Completed", f"{basket.basket_id}-order", _utc(order_times[basket.shopper_id]), order, identity
        )


def line_total(item: LineItem) -> float:
    """What the line cost, back from its unit price (a line of quantity 0 carries its value as its price)."""
    if item.price is None:
        return 0.0
    return item.price * item.quantity if item.quantity > 0 else item.price


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _present(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}
