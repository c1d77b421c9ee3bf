"""Suggestions for a new intent: catalogue products ranked under merchandising rules, plus the crowd.

Rules come from a JSON file (`INTENT_MERCHANDISING_RULES`, default `intent/data/merchandising.json`):

    pinned               {intent: [product_id, ...]}  always first, when eligible
    boosted_products     {product_id: factor}         score multipliers
    boosted_brands       {brand: factor}
    excluded_brands      [brand, ...]                 never suggested
    excluded_categories  [category, ...]
    price_ceiling_ratio  1.5                          at most 1.5 x the dearest product the shopper
                                                      viewed in the window (no ceiling without views)
    crowd_blend_below_events 3                        windows shorter than this lean on the crowd

Eligible: in stock, not excluded, under the price ceiling, not bought in the window. A product's score
is its category's weight for the intent, times its boosts, raised when the shopper viewed that
category lately, plus what the crowd says: decayed co-view and co-purchase counts of the products in
the window (`CrowdCounts`). For anonymous or new shoppers with little signal the crowd's neighbours
fill the list: the opening salvo. Each suggestion carries its reasons.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from intent.taxonomy import Product, Taxonomy

PURCHASE_WEIGHT = 3.0  # a co-purchase says more than a co-view
MAX_NEIGHBOURS = 50  # kept per product after a prune; a prune runs when twice as many gathered
MAX_PRODUCTS = 50_000
PRUNE_BELOW = 0.05


@dataclass(frozen=True)
class MerchandisingRules:
    pinned: dict[str, tuple[str, ...]] = field(default_factory=dict)
    boosted_products: dict[str, float] = field(default_factory=dict)
    boosted_brands: dict[str, float] = field(default_factory=dict)
    excluded_brands: frozenset[str] = frozenset()
    excluded_categories: frozenset[str] = frozenset()
    price_ceiling_ratio: float | None = 1.5
    crowd_blend_below_events: int = 3

    @classmethod
    def load(cls, path: Path) -> MerchandisingRules:
        raw = orjson.loads(path.read_bytes())
        return cls(
            pinned={intent: tuple(ids) for intent, ids in raw.get("pinned", {}).items()},
            boosted_products={k: float(v) for k, v in raw.get("boosted_products", {}).items()},
            boosted_brands={k: float(v) for k, v in raw.get("boosted_brands", {}).items()},
            excluded_brands=frozenset(raw.get("excluded_brands", [])),
            excluded_categories=frozenset(raw.get("excluded_categories", [])),
            price_ceiling_ratio=raw.get("price_ceiling_ratio"),
            crowd_blend_below_events=int(raw.get("crowd_blend_below_events", 3)),
        )


class CrowdCounts:
    """Exponentially decayed co-occurrence counts between products, bounded in memory.

    Each worker learns from the events it processes (its partitions' shoppers); counts are kept per
    product as {neighbour: [weight, updated_at]} and decay with `half_life_seconds`.
    """

    def __init__(self, half_life_seconds: float) -> None:
        self.half_life = half_life_seconds
        self.pairs: dict[str, dict[str, list[float]]] = {}

    def _decayed(self, entry: list[float], now: float) -> float:
        return entry[0] * 0.5 ** (max(0.0, now - entry[1]) / self.half_life)

    def observe(self, seen: Iterable[str], product: str, purchased: bool, now: float) -> None:
        """`product` was viewed (or bought) in a session where `seen` had been viewed before."""
        weight = PURCHASE_WEIGHT if purchased else 1.0
        for other in set(seen) - {product}:
            for a, b in ((product, other), (other, product)):
                neighbours = self.pairs.setdefault(a, {})
                entry = neighbours.get(b)
                neighbours[b] = [weight + (self._decayed(entry, now) if entry else 0.0), now]
                if len(neighbours) > 2 * MAX_NEIGHBOURS:  # amortised: a sort per 50 new neighbours
                    self._prune(neighbours, now)
        if len(self.pairs) > MAX_PRODUCTS:
            # forget the products whose strongest tie is weakest: they say the least
            ranked = sorted(
                self.pairs, key=lambda p: max((self._decayed(e, now) for e in self.pairs[p].values()), default=0.0)
            )
            for stale in ranked[: len(self.pairs) - MAX_PRODUCTS]:
                del self.pairs[stale]

    def _prune(self, neighbours: dict[str, list[float]], now: float) -> None:
        scores = {name: self._decayed(entry, now) for name, entry in neighbours.items()}
        ranked = sorted(scores, key=scores.__getitem__, reverse=True)
        for weak in ranked[MAX_NEIGHBOURS:]:
            del neighbours[weak]
        for name in ranked[:MAX_NEIGHBOURS]:
            if scores[name] < PRUNE_BELOW:
                del neighbours[name]

    def neighbours(self, products: Sequence[str], now: float) -> dict[str, tuple[float, str]]:
        """Neighbour -> (decayed score, the window product it is tied to most)."""
        found: dict[str, tuple[float, str]] = {}
        for product in products:
            for neighbour, entry in self.pairs.get(product, {}).items():
                score = self._decayed(entry, now)
                best = found.get(neighbour)
                total = score + (best[0] if best else 0.0)
                source = product if best is None or score > best[0] else best[1]
                found[neighbour] = (total, source)
        return found

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.pairs)

    @classmethod
    def from_bytes(cls, raw: bytes, half_life_seconds: float) -> CrowdCounts:
        counts = cls(half_life_seconds)
        counts.pairs = orjson.loads(raw)
        return counts


class Suggester:
    def __init__(
        self,
        taxonomy: Taxonomy,
        catalogue: Sequence[Product],
        rules: MerchandisingRules,
        crowd: CrowdCounts,
        max_items: int = 5,
    ) -> None:
        self.taxonomy = taxonomy
        self.products = {product.product_id: product for product in catalogue}
        self.rules = rules
        self.crowd = crowd
        self.max_items = max_items

    def suggest(self, intent_id: str, window: Sequence[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        """Ranked suggestions for `intent_id`, given the window's compact event records."""
        intent = self.taxonomy.get(intent_id)
        bought = {p for r in window if r.get("e") == "Order Completed" for p in [*r.get("ps", ()), r.get("p")] if p}
        viewed_prices = [r["pr"] for r in window if r.get("e") == "Product Viewed" and "pr" in r]
        ceiling = (
            max(viewed_prices) * self.rules.price_ceiling_ratio
            if viewed_prices and self.rules.price_ceiling_ratio is not None
            else None
        )
        recent_categories = {r["c"] for r in window[-10:] if "c" in r}
        window_products = list(dict.fromkeys(r["p"] for r in window if "p" in r))

        def eligible(product: Product) -> bool:
            return (
                product.in_stock
                and product.brand not in self.rules.excluded_brands
                and product.category not in self.rules.excluded_categories
                and product.product_id not in bought
                and (ceiling is None or product.price <= ceiling)
            )

        scored: dict[str, tuple[float, list[dict[str, str]]]] = {}
        for product in self.products.values():
            weight = intent.categories.get(product.category)
            if weight is None or not eligible(product):
                continue
            reasons = [_reason("intent_category", f"in {product.category}, typical of {intent.label.lower()}")]
            score = weight
            if product.category in recent_categories:
                score *= 1.5
                reasons.append(_reason("recently_viewed_category", f"matches your recent views of {product.category}"))
            for factor, code, text in (
                (self.rules.boosted_products.get(product.product_id), "boosted_product", "promoted product"),
                (self.rules.boosted_brands.get(product.brand), "boosted_brand", f"promoted brand {product.brand}"),
            ):
                if factor:
                    score *= factor
                    reasons.append(_reason(code, text))
            scored[product.product_id] = (score, reasons)

        crowd_weight = 1.0 if len(window) < self.rules.crowd_blend_below_events else 0.3
        for neighbour, (count, source) in self.crowd.neighbours(window_products, now).items():
            product = self.products.get(neighbour)
            if product is None or not eligible(product) or neighbour in window_products:
                continue
            in_intent = product.category in intent.categories
            if not in_intent and len(window) >= self.rules.crowd_blend_below_events:
                continue  # with enough signal, the crowd only reorders the intent's own products
            source_name = self.products[source].name if source in self.products else source
            bonus = crowd_weight * (1 - math.exp(-count))
            score, reasons = scored.get(neighbour, (0.0, []))
            scored[neighbour] = (
                score + bonus,
                [*reasons, _reason("crowd", f"often bought or viewed with {source_name}")],
            )

        pinned = [p for p in self.rules.pinned.get(intent_id, ()) if p in self.products and eligible(self.products[p])]
        ranked = sorted(scored, key=lambda pid: (-scored[pid][0], pid))
        order = list(dict.fromkeys([*pinned, *ranked]))[: self.max_items]
        suggestions = []
        for product_id in order:
            product = self.products[product_id]
            score, reasons = scored.get(product_id, (0.0, []))
            if product_id in pinned:
                reasons = [_reason("pinned", f"pinned for {intent.label.lower()}"), *reasons]
            suggestions.append(
                {
                    "product_id": product.product_id,
                    "name": product.name,
                    "category": product.category,
                    "brand": product.brand,
                    "price": product.price,
                    "score": round(score, 4),
                    "reasons": reasons,
                }
            )
        return suggestions


def _reason(code: str, text: str) -> dict[str, str]:
    return {"code": code, "text": text}
