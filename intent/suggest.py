"""Suggestions for a new intent: catalogue products ranked under merchandising rules, plus the crowd.

This stage runs when the detector reports an intent change; its output goes into the webhook
payload (`intent.policy.webhook_payload`). Rules come from a JSON file (`INTENT_MERCHANDISING_RULES`,
default: the domain's `merchandising.json`); every key is optional and an unknown key is an error, so
a misspelt rule fails at start-up instead of being ignored:

    version                  1
    pinned                   {intent: [product_id, ...]}  always first, in this order, when eligible
    boosted_products         {product_id: factor}         score multipliers (> 0)
    boosted_brands           {brand: factor}
    excluded_brands          [brand, ...]                 never suggested
    excluded_categories      [category, ...]
    price_ceiling_ratio      1.5                          suggestions cost at most 1.5 x ...
    price_ceiling_basis      "max"                        ... the "max" or "median" price of the
                                                          products viewed in the window; null
                                                          ratio or no viewed price: no ceiling
    crowd_blend_below_events 3                            windows shorter than this lean on the crowd

Eligible: in stock, not an excluded brand or category, under the price ceiling, not bought in the
window (the products of its `Order Completed` events). A product of the intent's categories scores
its category's weight for the intent, times its boosts, times 1.5 when the shopper viewed that
category lately; the crowd (`CrowdCounts`: decayed co-view and co-purchase counts of the stream)
adds a bonus for the neighbours of the window's last `CROWD_SPAN` products. With enough signal the crowd only
reorders the intent's own products; for anonymous or new shoppers with little signal it also brings
its own neighbours in, whatever their category: the opening salvo, said so in the reasons as
`crowd_opening`. Each suggestion carries its reasons as `{code, text}`: a machine-readable code
(`pinned`, `intent_category`, `recently_viewed_category`, `boosted_product`, `boosted_brand`,
`crowd`, `crowd_opening`) and a sentence a shopper could read.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from intent.events import ShopperEvent
from intent.taxonomy import Intent, Product, Taxonomy

PURCHASE_WEIGHT = 3.0  # a co-purchase says more than a co-view
MAX_NEIGHBOURS = 50  # kept per product after a prune; a prune runs when twice as many gathered
MAX_PRODUCTS = 50_000
PRUNE_BELOW = 0.05  # a tie this weak (about four half-lives after one view) says nothing
RECENT_EVENTS = 10  # the window's tail whose categories count as the shopper's recent views
RECENT_CATEGORY_BOOST = 1.5
CROWD_BLEND_WEIGHT = 0.3  # the crowd's bonus next to category weights, once the shopper has signal
# The crowd ties products met within this many events of a visit, and suggests the neighbours of
# the window's last this many products: the shopper's present, not their whole week.
CROWD_SPAN = 8
PRICE_CEILING_BASES = ("max", "median")
_RULE_KEYS = frozenset(
    {
        "version",
        "pinned",
        "boosted_products",
        "boosted_brands",
        "excluded_brands",
        "excluded_categories",
        "price_ceiling_ratio",
        "price_ceiling_basis",
        "crowd_blend_below_events",
    }
)


@dataclass(frozen=True)
class MerchandisingRules:
    pinned: dict[str, tuple[str, ...]] = field(default_factory=dict)
    boosted_products: dict[str, float] = field(default_factory=dict)
    boosted_brands: dict[str, float] = field(default_factory=dict)
    excluded_brands: frozenset[str] = frozenset()
    excluded_categories: frozenset[str] = frozenset()
    price_ceiling_ratio: float | None = 1.5
    price_ceiling_basis: str = "max"
    crowd_blend_below_events: int = 3

    def __post_init__(self) -> None:
        if self.price_ceiling_basis not in PRICE_CEILING_BASES:
            raise ValueError(f"price_ceiling_basis: one of {PRICE_CEILING_BASES}, got {self.price_ceiling_basis!r}")
        if self.price_ceiling_ratio is not None and self.price_ceiling_ratio <= 0:
            raise ValueError(f"price_ceiling_ratio: a positive number or null, got {self.price_ceiling_ratio}")
        for name, factors in (("boosted_products", self.boosted_products), ("boosted_brands", self.boosted_brands)):
            if any(factor <= 0 for factor in factors.values()):
                raise ValueError(f"{name}: factors are positive; exclude instead of boosting by zero")

    @classmethod
    def load(cls, path: Path) -> MerchandisingRules:
        raw = orjson.loads(path.read_bytes())
        unknown = set(raw) - _RULE_KEYS
        if unknown:
            raise ValueError(f"{path}: unknown merchandising rules {sorted(unknown)}")
        try:
            return cls(
                pinned={intent: tuple(ids) for intent, ids in raw.get("pinned", {}).items()},
                boosted_products={k: float(v) for k, v in raw.get("boosted_products", {}).items()},
                boosted_brands={k: float(v) for k, v in raw.get("boosted_brands", {}).items()},
                excluded_brands=frozenset(raw.get("excluded_brands", [])),
                excluded_categories=frozenset(raw.get("excluded_categories", [])),
                price_ceiling_ratio=raw.get("price_ceiling_ratio", 1.5),
                price_ceiling_basis=raw.get("price_ceiling_basis", "max"),
                crowd_blend_below_events=int(raw.get("crowd_blend_below_events", 3)),
            )
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def price_ceiling(self, viewed_prices: Sequence[float]) -> float | None:
        """The dearest price worth suggesting to a shopper who viewed these prices."""
        if not viewed_prices or self.price_ceiling_ratio is None:
            return None
        basis = max(viewed_prices) if self.price_ceiling_basis == "max" else statistics.median(viewed_prices)
        return basis * self.price_ceiling_ratio


@dataclass(frozen=True, slots=True)
class CrowdTie:
    """What the crowd says about one neighbour of the window's products."""

    score: float  # decayed co-views plus PURCHASE_WEIGHT x decayed co-purchases, over the window
    source: str  # the window product it is tied to most strongly
    bought: bool  # co-purchases carry most of the score


class CrowdCounts:
    """Exponentially decayed co-view and co-purchase counts between products, bounded in memory.

    Each worker learns from the events it processes (its partitions' shoppers). A product's ties
    are `{neighbour: [views, purchases, updated_at]}`, decaying with `half_life_seconds` of event
    time; they are one orjson value per product (`product_bytes`, `restore`), so the app can keep
    them in a table keyed by product id. Memory is bounded twice: a product keeps its
    `max_neighbours` strongest ties (pruned when twice as many gathered, dropping the weak ones),
    and past `max_products` products (plus a tenth, so the sort is amortised) the products whose
    strongest tie is weakest are forgotten.
    """

    def __init__(
        self, half_life_seconds: float, max_neighbours: int = MAX_NEIGHBOURS, max_products: int = MAX_PRODUCTS
    ) -> None:
        self.half_life = half_life_seconds
        self.max_neighbours = max_neighbours
        self.max_products = max_products
        self.ties: dict[str, dict[str, list[float]]] = {}

    def _decay(self, since: float, until: float) -> float:
        return 0.5 ** (max(0.0, until - since) / self.half_life)

    def _score(self, tie: list[float], now: float) -> float:
        views, purchases, updated_at = tie
        return (views + PURCHASE_WEIGHT * purchases) * self._decay(updated_at, now)

    def learn(self, event: ShopperEvent, window_tail: Sequence[dict[str, Any]]) -> None:
        """The crowd learns which products go together within a visit: each product of `event`
        (an order's products, else the event's product) is tied to the products of the window's
        last records (`window_tail`, the window before the event)."""
        bought = event.event_type == "Order Completed"
        products = event.products if bought and event.products else (event.product_id,)
        if not any(products):
            return
        seen = {record["p"] for record in window_tail if "p" in record}
        for product in products:
            if product and seen:
                self.observe(seen, product, bought, event.timestamp)

    def observe(self, seen: Iterable[str], product: str, purchased: bool, now: float) -> set[str]:
        """`product` was viewed (or bought) at `now` in a visit where `seen` had been viewed before.

        Returns the products whose ties changed: store `product_bytes(p)` for each, or delete the
        key where it is None (the product was forgotten)."""
        others = set(seen) - {product}
        weight_index = 1 if purchased else 0
        for other in others:
            for a, b in ((product, other), (other, product)):
                neighbours = self.ties.setdefault(a, {})
                tie = neighbours.get(b)
                if tie is None:
                    neighbours[b] = [0.0, 1.0, now] if purchased else [1.0, 0.0, now]
                elif now >= tie[2]:
                    kept = 0.5 ** ((now - tie[2]) / self.half_life)
                    tie[0], tie[1], tie[2] = tie[0] * kept, tie[1] * kept, now
                    tie[weight_index] += 1.0
                else:  # a late event adds its weight decayed to the tie's time: a tie never grows older
                    tie[weight_index] += 0.5 ** ((tie[2] - now) / self.half_life)
                if len(neighbours) > 2 * self.max_neighbours:
                    self._prune(a, now)
        changed = {product, *others} if others else set()
        if len(self.ties) > self.max_products + max(1, self.max_products // 10):
            changed |= self._forget_weakest_products(now)
        return changed

    def _prune(self, product: str, now: float) -> None:
        neighbours = self.ties[product]
        scores = {name: self._score(tie, now) for name, tie in neighbours.items()}
        strongest = sorted(scores, key=lambda name: (-scores[name], name))[: self.max_neighbours]
        kept = {name: neighbours[name] for name in strongest if scores[name] >= PRUNE_BELOW}
        if kept:
            self.ties[product] = kept
        else:
            del self.ties[product]

    def _forget_weakest_products(self, now: float) -> set[str]:
        strength = {
            product: max(self._score(tie, now) for tie in neighbours.values())
            for product, neighbours in self.ties.items()
        }
        weakest = sorted(strength, key=lambda product: (strength[product], product))
        forgotten = set(weakest[: len(self.ties) - self.max_products])
        for product in forgotten:
            del self.ties[product]
        return forgotten

    def neighbours(
        self, products: Sequence[str], now: float, wanted: Callable[[str], bool] | None = None
    ) -> dict[str, CrowdTie]:
        """The crowd's neighbours of `products` (a window's, oldest first), summed over them;
        only those `wanted` says yes to, when given (the others cost nothing more)."""
        totals: dict[str, float] = {}
        bought: dict[str, float] = {}
        strongest: dict[str, tuple[float, str]] = {}
        half_life = self.half_life
        for product in dict.fromkeys(products):
            for neighbour, (views, purchases, updated_at) in self.ties.get(product, {}).items():
                if wanted is not None and not wanted(neighbour):
                    continue
                decay = 0.5 ** (max(0.0, now - updated_at) / half_life)  # `_decay`, inlined: the hot loop
                from_purchases = PURCHASE_WEIGHT * purchases * decay
                score = views * decay + from_purchases
                totals[neighbour] = totals.get(neighbour, 0.0) + score
                bought[neighbour] = bought.get(neighbour, 0.0) + from_purchases
                if neighbour not in strongest or score > strongest[neighbour][0]:
                    strongest[neighbour] = (score, product)
        return {
            neighbour: CrowdTie(total, strongest[neighbour][1], bought[neighbour] > total / 2)
            for neighbour, total in totals.items()
        }

    def product_bytes(self, product: str) -> bytes | None:
        """One product's ties as a table value; None when it has none (delete the key)."""
        neighbours = self.ties.get(product)
        return orjson.dumps(neighbours) if neighbours else None

    def restore(self, product: str, raw: bytes) -> None:
        """Load a product's ties from `product_bytes`, e.g. while a table recovers."""
        self.ties[product] = orjson.loads(raw)


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
        # What does not depend on the shopper is worked out once: each intent's own products
        # that the rules allow, with their category weight times their boosts.
        self._candidates: dict[str, list[tuple[Product, float]]] = {}
        for intent_id in taxonomy.ids:
            categories = taxonomy.get(intent_id).categories
            self._candidates[intent_id] = [
                (product, self._boost(product))
                for product in catalogue
                if product.category in categories and self._allowed(product)
            ]

    def _allowed(self, product: Product) -> bool:
        return (
            product.in_stock
            and product.brand not in self.rules.excluded_brands
            and product.category not in self.rules.excluded_categories
        )

    def _boost(self, product: Product) -> float:
        return self.rules.boosted_products.get(product.product_id, 1.0) * self.rules.boosted_brands.get(
            product.brand, 1.0
        )

    def suggest(
        self,
        intent_id: str,
        window: Sequence[dict[str, Any]],
        now: float,
        category_scores: Mapping[str, float] | None = None,
    ) -> list[dict[str, Any]]:
        """Ranked suggestions for `intent_id`, given the window's compact event records
        (`intent.window.compact`, oldest first) and the time the crowd's counts decay to.
        `category_scores` (a next-basket model's ranking of this shopper's categories,
        `intent.history.category_scores`) replaces the intent's fixed category weights, so the
        products come from the categories this shopper is likely to buy next.

        Scores first, reasons only for the products suggested: this runs in the stream on every
        intent change."""
        intent = self.taxonomy.get(intent_id)
        category_weight = intent.categories if category_scores is None else category_scores
        bought = {p for r in window if r.get("e") == "Order Completed" for p in [*r.get("ps", ()), r.get("p")] if p}
        ceiling = self.rules.price_ceiling([r["pr"] for r in window if r.get("e") == "Product Viewed" and "pr" in r])
        recent_categories = {r["c"] for r in window[-RECENT_EVENTS:] if "c" in r}
        window_products = list(dict.fromkeys(r["p"] for r in window if "p" in r))
        little_signal = len(window) < self.rules.crowd_blend_below_events

        def for_this_shopper(product: Product) -> bool:
            return product.product_id not in bought and (ceiling is None or product.price <= ceiling)

        def eligible(product: Product) -> bool:
            return for_this_shopper(product) and self._allowed(product)

        scores: dict[str, float] = {}
        for product, boost in self._candidates[intent_id]:  # already allowed by the rules
            if not for_this_shopper(product):
                continue
            recent = RECENT_CATEGORY_BOOST if product.category in recent_categories else 1.0
            scores[product.product_id] = category_weight.get(product.category, 0.0) * boost * recent

        # An intent without categories (browsing) has only the crowd to go on, like a new shopper.
        crowd_leads = little_signal or not intent.categories
        crowd_weight = 1.0 if crowd_leads else CROWD_BLEND_WEIGHT
        in_window = set(window_products)

        def wanted(neighbour: str) -> bool:
            product = self.products.get(neighbour)
            return (
                product is not None
                and neighbour not in in_window
                and (crowd_leads or product.category in intent.categories)
                and eligible(product)
            )

        ties = self.crowd.neighbours(window_products[-CROWD_SPAN:], now, wanted)
        for neighbour, tie in ties.items():
            scores[neighbour] = scores.get(neighbour, 0.0) + crowd_weight * (1 - math.exp(-tie.score))

        pinned = [p for p in self.rules.pinned.get(intent_id, ()) if p in self.products and eligible(self.products[p])]
        # Equal scores (a category's products) go to the category's best sellers first.
        products = self.products
        ranked = heapq.nsmallest(
            self.max_items + len(pinned), scores, key=lambda pid: (-scores[pid], -products[pid].popularity, pid)
        )
        suggestions = []
        for product_id in list(dict.fromkeys([*pinned, *ranked]))[: self.max_items]:
            product = self.products[product_id]
            suggestions.append(
                {
                    "product_id": product.product_id,
                    "name": product.name,
                    "category": product.category,
                    "brand": product.brand,
                    "price": product.price,
                    "score": round(scores.get(product_id, 0.0), 4),
                    "reasons": self._reasons(
                        product, intent, product_id in pinned, recent_categories, ties.get(product_id), little_signal
                    ),
                }
            )
        return suggestions

    def _reasons(
        self,
        product: Product,
        intent: Intent,
        pinned: bool,
        recent_categories: set[str],
        tie: CrowdTie | None,
        little_signal: bool,
    ) -> list[dict[str, str]]:
        """Why `product` is suggested, in the order its score was built."""
        reasons = [_reason("pinned", f"pinned for {intent.label.lower()}")] if pinned else []
        if product.category in intent.categories:  # every suggested product is eligible
            reasons.append(_reason("intent_category", f"in {product.category}, typical of {intent.label.lower()}"))
            if product.category in recent_categories:
                reasons.append(_reason("recently_viewed_category", f"matches your recent views of {product.category}"))
            if product.product_id in self.rules.boosted_products:
                reasons.append(_reason("boosted_product", "promoted product"))
            if product.brand in self.rules.boosted_brands:
                reasons.append(_reason("boosted_brand", f"promoted brand {product.brand}"))
        if tie is not None:
            source = self.products[tie.source].name if tie.source in self.products else tie.source
            together = f"often {'bought' if tie.bought else 'viewed'} with {source}"
            reasons.append(
                _reason("crowd_opening", f"{together} by other shoppers: a first pick while your visit is new")
                if little_signal
                else _reason("crowd", together)
            )
        return reasons


def _reason(code: str, text: str) -> dict[str, str]:
    return {"code": code, "text": text}
