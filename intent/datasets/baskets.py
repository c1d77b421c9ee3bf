"""Baskets: a retailer's purchase log as training and evaluation read it (one record per basket).

The stream sees a basket as a visit of `Product Added` events followed by `Order Completed`
(`intent replay --format completejourney`); training and the next-basket evaluation read the same
log as these records, built by the same loader, so both sides agree on what a basket holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from intent.events import iso_time


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


def basket_events(basket: Basket) -> list[dict[str, Any]]:
    """The visit a basket is to the stream: one `Product Added` per line item, then `Order
    Completed`. Line items are a second apart in their order and the order a second after the
    last, so the visit keeps its order and its time. Replay and training both use this, so the
    model learns from exactly the events the worker will see."""
    context: dict[str, Any] = {
        "sessionId": basket.basket_id,
        # Purchase logs carry no consent field; a retailer replaying its own logs has it.
        "consent": {"categoryPreferences": {"Personalization": True}},
    }
    if basket.segment is not None:
        context["traits"] = {"segment": basket.segment}
    events = []
    for position, item in enumerate(basket.items):
        properties: dict[str, Any] = {"product_id": item.product_id, "quantity": item.quantity}
        for key, value in (
            ("category", item.category),
            ("product_type", item.product_type),
            ("brand", item.brand),
            ("price", item.price),
        ):
            if value is not None:
                properties[key] = value
        events.append(
            {
                "type": "track",
                "event": "Product Added",
                "messageId": f"{basket.basket_id}-{position}",
                "userId": basket.shopper_id,
                "timestamp": iso_time(basket.timestamp + position),
                "properties": properties,
                "context": context,
            }
        )
    events.append(
        {
            "type": "track",
            "event": "Order Completed",
            "messageId": f"{basket.basket_id}-order",
            "userId": basket.shopper_id,
            "timestamp": iso_time(basket.timestamp + len(basket.items)),
            "properties": {
                "order_id": basket.basket_id,
                "revenue": round(sum((item.price or 0.0) * item.quantity for item in basket.items), 2),
                "products": [
                    {"product_id": item.product_id, "category": item.category, "quantity": item.quantity}
                    for item in basket.items
                ],
            },
            "context": context,
        }
    )
    return events
