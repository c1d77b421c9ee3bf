"""Suggestions: merchandising rules, reasons, and the crowd for shoppers with little signal."""

from __future__ import annotations

from dataclasses import replace

import pytest

from intent.settings import Settings
from intent.suggest import MAX_NEIGHBOURS, CrowdCounts, MerchandisingRules, Suggester
from intent.taxonomy import Product, Taxonomy

DAY = 86400.0
NOW = 1_767_600_000.0


def view(product: Product, at: float = NOW) -> dict:
    return {"e": "Product Viewed", "t": at, "p": product.product_id, "c": product.category, "pr": product.price}


@pytest.fixture
def rules() -> MerchandisingRules:
    return MerchandisingRules.load(Settings().merchandising_rules)


def suggester(taxonomy: Taxonomy, catalogue: tuple[Product, ...], rules: MerchandisingRules, crowd=None, **kw):
    return Suggester(taxonomy, catalogue, rules, crowd or CrowdCounts(3 * DAY), kw.get("max_items", 5))


def by_id(catalogue: tuple[Product, ...], product_id: str) -> Product:
    return next(p for p in catalogue if p.product_id == product_id)


def test_suggestions_belong_to_the_intent_are_in_stock_and_say_why(taxonomy, catalogue, rules) -> None:
    tea = by_id(catalogue, "P0037")  # Echinacea Immune Tea, herbal tea, 5.24
    window = [view(tea), view(tea, NOW + 60)]
    suggestions = suggester(taxonomy, catalogue, rules).suggest("cold_flu_care", window, NOW)
    cold = taxonomy.get("cold_flu_care")
    products = {p.product_id: p for p in catalogue}
    assert len(suggestions) == 5
    for item in suggestions:
        product = products[item["product_id"]]
        assert product.in_stock and product.category in cold.categories
        assert item["reasons"] and all(r["code"] and r["text"] for r in item["reasons"])
    assert suggestions[0]["product_id"] == "P0034"  # pinned: Cold Relief Herbal Tea
    assert suggestions[0]["reasons"][0]["code"] == "pinned"
    assert all(item["category"] != "thermometers" for item in suggestions)  # an excluded category


def test_products_bought_in_the_window_are_not_suggested_again(taxonomy, catalogue, rules) -> None:
    order = {"e": "Order Completed", "t": NOW, "ps": ["P0034", "P0037"]}
    suggestions = suggester(taxonomy, catalogue, rules).suggest("cold_flu_care", [order], NOW)
    assert {"P0034", "P0037"}.isdisjoint(item["product_id"] for item in suggestions)


def test_the_price_ceiling_follows_what_the_shopper_viewed(taxonomy, catalogue, rules) -> None:
    cheap = by_id(catalogue, "P0036")  # 2.30
    suggestions = suggester(taxonomy, catalogue, rules, max_items=50).suggest("cold_flu_care", [view(cheap)], NOW)
    assert suggestions and all(item["price"] <= cheap.price * rules.price_ceiling_ratio for item in suggestions)
    unlimited = replace(rules, price_ceiling_ratio=None)
    everything = suggester(taxonomy, catalogue, unlimited, max_items=50).suggest("cold_flu_care", [view(cheap)], NOW)
    assert max(item["price"] for item in everything) > cheap.price * rules.price_ceiling_ratio


def test_boosts_and_exclusions_change_the_ranking(taxonomy, catalogue, rules) -> None:
    plain = replace(rules, pinned={}, boosted_products={}, boosted_brands={})
    baseline = [
        s["product_id"] for s in suggester(taxonomy, catalogue, plain, max_items=50).suggest("coffee_ritual", [], NOW)
    ]
    last = baseline[-1]
    boosted = replace(plain, boosted_products={last: 100.0})
    ranked = suggester(taxonomy, catalogue, boosted, max_items=50).suggest("coffee_ritual", [], NOW)
    assert ranked[0]["product_id"] == last and ranked[0]["reasons"][-1]["code"] == "boosted_product"
    brand = by_id(catalogue, baseline[0]).brand
    excluded = replace(plain, excluded_brands=frozenset({brand}))
    assert all(
        s["brand"] != brand
        for s in suggester(taxonomy, catalogue, excluded, max_items=50).suggest("coffee_ritual", [], NOW)
    )


def test_a_new_shopper_gets_the_crowds_neighbours_first(taxonomy, catalogue, rules) -> None:
    crowd = CrowdCounts(3 * DAY)
    for _ in range(5):  # many visitors viewed the lozenges right after the echinacea tea
        crowd.observe(["P0037"], "P0058", purchased=False, now=NOW)
    lozenge = by_id(catalogue, "P0058")
    assert lozenge.category in taxonomy.get("cold_flu_care").categories
    new_shopper = [view(by_id(catalogue, "P0037"))]  # one event: little signal
    suggestions = suggester(taxonomy, catalogue, replace(rules, pinned={}), crowd).suggest(
        "cold_flu_care", new_shopper, NOW
    )
    assert suggestions[0]["product_id"] == "P0058"
    assert any(r["code"] == "crowd" and "Echinacea Immune Tea" in r["text"] for r in suggestions[0]["reasons"])


def test_crowd_counts_decay_stay_bounded_and_round_trip() -> None:
    crowd = CrowdCounts(half_life_seconds=DAY)
    crowd.observe(["A"], "B", purchased=True, now=NOW)
    assert crowd.neighbours(["A"], NOW)["B"][0] == pytest.approx(3.0)
    assert crowd.neighbours(["A"], NOW + DAY)["B"][0] == pytest.approx(1.5)
    for number in range(MAX_NEIGHBOURS * 3):
        crowd.observe(["hub"], f"p{number}", purchased=False, now=NOW + number)
    assert len(crowd.pairs["hub"]) <= 2 * MAX_NEIGHBOURS
    restored = CrowdCounts.from_bytes(crowd.to_bytes(), DAY)
    assert restored.neighbours(["A"], NOW) == crowd.neighbours(["A"], NOW)
