"""Baskets: a retailer's purchase log as training and evaluation read it (one record per basket).

The stream sees a basket as a visit of `Product Added` events followed by `Order Completed`
(`intent replay --format completejourney`); training and the next-basket evaluation read the same
log as these records, built by the same loader, so both sides agree on what a basket holds.
"""

from __future__ import annotations

from dataclasses import dataclass


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
