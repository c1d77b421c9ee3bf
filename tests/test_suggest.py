"""Suggestions: merchandising rules, reasons, and the crowd for shoppers with little signal."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from intent.domain import load_domain
from intent.stores import DictStore
from intent.suggest import CROWD_SPAN, PURCHASE_WEIGHT, CrowdCounts, MerchandisingRules, Suggester
from intent.taxonomy import DEMO_DOMAIN_DIR, Product, Taxonomy

DAY = 86400.0
NOW = 1_767_600_000.0


def view(product: Product, at: float = NOW) -> dict:
    """A window's compact record of a product view (`intent.window.compact`)."""
    return {"e": "Product Viewed", "t": at, "p": product.product_id, "c": product.category, "pr": product.price}


@pytest.fixture
def rules() -> MerchandisingRules:
    return MerchandisingRules.load(load_domain(DEMO_DOMAIN_DIR).merchandising_rules)


@pytest.fixture
def plain(rules: MerchandisingRules) -> MerchandisingRules:
    """The shipped rules without pins and boosts, so a test sees the ranking it changes."""
    return replace(rules, pinned={}, boosted_products={}, boosted_brands={})


def suggester(
    taxonomy: Taxonomy,
    catalogue: tuple[Product, ...],
    rules: MerchandisingRules,
    crowd: CrowdCounts | None = None,
    max_items: int = 5,
) -> Suggester:
    return Suggester(taxonomy, catalogue, rules, crowd or CrowdCounts(3 * DAY), max_items)


def by_id(catalogue: tuple[Product, ...], product_id: str) -> Product:
    return next(p for p in catalogue if p.product_id == product_id)


def ids(suggestions: list[dict]) -> list[str]:
    return [item["product_id"] for item in suggestions]


def test_suggestions_belong_to_the_intent_are_in_stock_and_say_why(taxonomy, catalogue, rules) -> None:
    tea = by_id(catalogue, "P0037")  # Echinacea Immune Tea, herbal tea, 5.24
    window = [view(tea), view(tea, NOW + 60)]
    suggestions = suggester(taxonomy, catalogue, rules).suggest("cold_flu_care", window, NOW)
    cold = taxonomy.get("cold_flu_care")
    products = {p.product_id: p for p in catalogue}
    assert len(suggestions) == 5  # the default maximum
    for item in suggestions:
        product = products[item["product_id"]]
        assert product.in_stock and product.category in cold.categories
        assert item["reasons"] and all(r["code"] and r["text"] for r in item["reasons"])
        assert item | {"score": 0} == {
            "product_id": product.product_id,
            "name": product.name,
            "category": product.category,
            "brand": product.brand,
            "price": product.price,
            "score": 0,
            "reasons": item["reasons"],
        }
    ranked_scores = [item["score"] for item in suggestions[1:]]  # after the pinned tea
    assert ranked_scores == sorted(ranked_scores, reverse=True)
    herbal = [item for item in suggestions if item["category"] == "herbal tea"]
    assert herbal and all("recently_viewed_category" in [r["code"] for r in item["reasons"]] for item in herbal)
    assert all(item["category"] != "thermometers" for item in suggestions)  # an excluded category


def test_pinned_products_come_first_in_their_order_with_the_reason(taxonomy, catalogue, plain) -> None:
    baseline = ids(suggester(taxonomy, catalogue, plain, max_items=50).suggest("cold_flu_care", [], NOW))
    pins = (baseline[-1], baseline[-2])  # the two the ranking likes least
    pinned = replace(plain, pinned={"cold_flu_care": pins})
    suggestions = suggester(taxonomy, catalogue, pinned).suggest("cold_flu_care", [], NOW)
    assert tuple(ids(suggestions)[:2]) == pins
    assert [item["reasons"][0]["code"] for item in suggestions[:2]] == ["pinned", "pinned"]
    assert ids(suggestions)[2:] == baseline[:3]
    assert "pinned" not in {r["code"] for item in suggestions[2:] for r in item["reasons"]}


def test_out_of_stock_products_are_never_suggested_even_pinned_and_boosted(taxonomy, catalogue, plain) -> None:
    lungo = by_id(catalogue, "P0011")  # Lungo Pods, coffee pods: out of stock in the catalogue
    assert not lungo.in_stock
    promoted = replace(plain, pinned={"coffee_ritual": ("P0011",)}, boosted_products={"P0011": 100.0})
    everything = suggester(taxonomy, catalogue, promoted, max_items=500).suggest("coffee_ritual", [], NOW)
    assert everything and "P0011" not in ids(everything)
    restocked = tuple(replace(p, in_stock=True) if p is lungo else p for p in catalogue)
    assert ids(suggester(taxonomy, restocked, promoted).suggest("coffee_ritual", [], NOW))[0] == "P0011"


def test_products_bought_in_the_window_are_not_suggested_again(taxonomy, catalogue, rules) -> None:
    before = ids(suggester(taxonomy, catalogue, rules).suggest("cold_flu_care", [], NOW))
    order = {"e": "Order Completed", "t": NOW, "ps": ["P0034", before[1]]}  # the pinned tea and another
    after = ids(suggester(taxonomy, catalogue, rules).suggest("cold_flu_care", [order], NOW))
    assert {"P0034", before[1]}.isdisjoint(after)
    assert len(after) == 5


def test_the_price_ceiling_follows_the_dearest_or_median_price_viewed(taxonomy, catalogue, rules) -> None:
    cheap, dear = by_id(catalogue, "P0036"), by_id(catalogue, "P0054")  # 2.30 and 5.04
    window = [view(cheap), view(cheap, NOW + 1), view(dear, NOW + 2)]
    by_max = suggester(taxonomy, catalogue, rules, max_items=50).suggest("cold_flu_care", window, NOW)
    assert max(item["price"] for item in by_max) <= dear.price * 1.5
    median_rules = replace(rules, price_ceiling_basis="median")
    by_median = suggester(taxonomy, catalogue, median_rules, max_items=50).suggest("cold_flu_care", window, NOW)
    assert by_median and max(item["price"] for item in by_median) <= cheap.price * 1.5
    assert max(item["price"] for item in by_max) > cheap.price * 1.5  # the basis is what made the difference
    no_ceiling = replace(rules, price_ceiling_ratio=None)
    everything = suggester(taxonomy, catalogue, no_ceiling, max_items=50).suggest("cold_flu_care", window, NOW)
    assert max(item["price"] for item in everything) > dear.price * 1.5
    assert len(suggester(taxonomy, catalogue, rules, max_items=50).suggest("cold_flu_care", [], NOW)) == len(
        everything
    )  # nothing viewed, nothing to compare with: no ceiling


def test_boosts_lift_products_and_brands_and_say_so(taxonomy, catalogue, plain) -> None:
    baseline = ids(suggester(taxonomy, catalogue, plain, max_items=50).suggest("coffee_ritual", [], NOW))
    last = baseline[-1]
    boosted = replace(plain, boosted_products={last: 100.0})
    ranked = suggester(taxonomy, catalogue, boosted).suggest("coffee_ritual", [], NOW)
    assert ranked[0]["product_id"] == last and ranked[0]["reasons"][-1]["code"] == "boosted_product"
    brand = by_id(catalogue, last).brand
    by_brand = suggester(taxonomy, catalogue, replace(plain, boosted_brands={brand: 100.0})).suggest(
        "coffee_ritual", [], NOW
    )
    assert by_brand[0]["brand"] == brand and by_brand[0]["reasons"][-1]["code"] == "boosted_brand"


def test_excluded_brands_and_categories_are_never_suggested(taxonomy, catalogue, plain) -> None:
    baseline = suggester(taxonomy, catalogue, plain, max_items=50).suggest("coffee_ritual", [], NOW)
    brand, category = baseline[0]["brand"], baseline[0]["category"]
    without_brand = replace(plain, excluded_brands=frozenset({brand}))
    without_category = replace(plain, excluded_categories=frozenset({category}))
    remaining = suggester(taxonomy, catalogue, without_brand, max_items=50).suggest("coffee_ritual", [], NOW)
    assert remaining and all(item["brand"] != brand for item in remaining)
    remaining = suggester(taxonomy, catalogue, without_category, max_items=50).suggest("coffee_ritual", [], NOW)
    assert remaining and all(item["category"] != category for item in remaining)


def test_the_list_stops_at_the_maximum_count(taxonomy, catalogue, rules) -> None:
    everything = suggester(taxonomy, catalogue, rules, max_items=500).suggest("coffee_ritual", [], NOW)
    assert len(everything) > 5
    for maximum in (1, 2, 5):
        assert (
            suggester(taxonomy, catalogue, rules, max_items=maximum).suggest("coffee_ritual", [], NOW)
            == (everything[:maximum])
        )


def test_a_new_shopper_gets_the_crowds_neighbours_first_as_an_opening_salvo(taxonomy, catalogue, plain) -> None:
    crowd = CrowdCounts(3 * DAY)
    for _ in range(5):  # many visitors went on from the echinacea tea to these two
        crowd.observe(["P0037"], "P0058", purchased=False, now=NOW)  # menthol lozenges: a cold product
        crowd.observe(["P0037"], "P0051", purchased=False, now=NOW)  # honey lemon syrup: not a cold category
    cold = taxonomy.get("cold_flu_care")
    assert by_id(catalogue, "P0051").category not in cold.categories
    new_shopper = [view(by_id(catalogue, "P0037"))]  # one event: little signal
    suggestions = suggester(taxonomy, catalogue, plain, crowd).suggest("cold_flu_care", new_shopper, NOW)
    assert ids(suggestions)[:2] == ["P0058", "P0051"]
    for item in suggestions[:2]:
        crowd_reason = item["reasons"][-1]
        assert crowd_reason["code"] == "crowd_opening"
        assert "often viewed with Echinacea Immune Tea" in crowd_reason["text"]


def test_with_enough_signal_the_crowd_only_reorders_the_intents_products(taxonomy, catalogue, plain) -> None:
    crowd = CrowdCounts(3 * DAY)
    for _ in range(5):
        crowd.observe(["P0037"], "P0058", purchased=True, now=NOW)
        crowd.observe(["P0037"], "P0051", purchased=True, now=NOW)
    window = [view(by_id(catalogue, pid), NOW + n) for n, pid in enumerate(["P0037", "P0039", "P0054", "P0062"])]
    with_crowd = suggester(taxonomy, catalogue, plain, crowd, max_items=50).suggest("cold_flu_care", window, NOW)
    alone = suggester(taxonomy, catalogue, plain, max_items=50).suggest("cold_flu_care", window, NOW)
    assert "P0051" not in ids(with_crowd)  # honey is not a cold & flu category
    assert ids(alone).index("P0057") < ids(alone).index("P0058")  # same category, same weight: by id
    assert ids(with_crowd).index("P0058") < ids(with_crowd).index("P0057")
    lozenge = next(item for item in with_crowd if item["product_id"] == "P0058")
    assert lozenge["reasons"][-1] == {"code": "crowd", "text": "often bought with Echinacea Immune Tea x20"}
    assert sorted(ids(with_crowd)) == sorted(ids(alone))


def test_the_crowd_looks_only_at_the_neighbours_of_the_windows_last_products(taxonomy, catalogue, plain) -> None:
    crowd = CrowdCounts(3 * DAY)
    for _ in range(5):
        crowd.observe(["P0037"], "P0058", purchased=True, now=NOW)  # the echinacea tea's neighbour
    earlier = [view(by_id(catalogue, "P0037"), NOW - 3600)]
    others = [p for p in catalogue if p.category in taxonomy.get("cold_flu_care").categories][:20]
    others = [p for p in others if p.product_id not in ("P0037", "P0058")][:CROWD_SPAN]
    later = [view(product, NOW + number) for number, product in enumerate(others)]

    def crowd_reasons(window: list[dict]) -> list[dict]:
        suggested = suggester(taxonomy, catalogue, plain, crowd, max_items=50).suggest("cold_flu_care", window, NOW)
        return [reason for item in suggested for reason in item["reasons"] if reason["code"] == "crowd"]

    assert crowd_reasons(earlier + later[:-1])  # the tea is among the last CROWD_SPAN products
    assert not crowd_reasons(earlier + later)  # pushed out of the span: the crowd says nothing


def test_crowd_counts_decay_with_their_half_life_and_weigh_purchases_more() -> None:
    crowd = CrowdCounts(half_life_seconds=DAY)
    crowd.observe(["A"], "B", purchased=True, now=NOW)
    crowd.observe(["A"], "C", purchased=False, now=NOW)
    now = crowd.neighbours(["A"], NOW)
    assert now["B"].score == pytest.approx(PURCHASE_WEIGHT) and now["B"].bought and now["B"].source == "A"
    assert now["C"].score == pytest.approx(1.0) and not now["C"].bought
    assert crowd.neighbours(["B"], NOW)["A"].score == pytest.approx(PURCHASE_WEIGHT)  # ties go both ways
    assert crowd.neighbours(["A"], NOW + DAY)["B"].score == pytest.approx(PURCHASE_WEIGHT / 2)
    assert crowd.neighbours(["A"], NOW + 2 * DAY)["C"].score == pytest.approx(0.25)
    crowd.observe(["A"], "C", purchased=False, now=NOW - DAY)  # a late event counts as half a view today
    assert crowd.neighbours(["A"], NOW)["C"].score == pytest.approx(1.5)


def test_crowd_counts_stay_bounded_and_report_what_to_store_or_delete() -> None:
    crowd = CrowdCounts(half_life_seconds=DAY, max_neighbours=4, max_products=20)
    changed: set[str] = set()
    for number in range(100):
        changed |= crowd.observe(["hub"], f"p{number:03}", purchased=number % 10 == 0, now=NOW + number)
        assert len(crowd.ties.get("hub", {})) <= 2 * 4
        assert len(crowd.ties) <= 20 + 2
    # the hub keeps its strongest ties: the purchases
    assert {"p090", "p080", "p070"} <= set(crowd.ties["hub"])
    forgotten = {product for product in changed if crowd.product_bytes(product) is None}
    assert forgotten and forgotten.isdisjoint(crowd.ties)
    assert changed - forgotten == set(crowd.ties)


def test_crowd_counts_round_trip_through_a_store_keyed_by_product() -> None:
    crowd = CrowdCounts(half_life_seconds=DAY)
    store = DictStore()
    for seen, product, bought in ((["A"], "B", True), (["A", "B"], "C", False), (["C"], "A", False)):
        for key in crowd.observe(seen, product, bought, NOW):
            raw = crowd.product_bytes(key)
            if raw is None:
                store.delete(key, 0)
            else:
                store.put(key, raw, 0)
    assert set(store.data) == {"A", "B", "C"}
    assert orjson.loads(store.data["A"])["B"] == [0.0, 1.0, NOW]
    restored = CrowdCounts(half_life_seconds=DAY)
    for key, raw in store.items():
        restored.restore(key, raw)
    for products in (["A"], ["B"], ["C"], ["A", "B", "C"]):
        assert restored.neighbours(products, NOW + DAY) == crowd.neighbours(products, NOW + DAY)


def test_the_shipped_rules_name_real_intents_products_brands_and_categories(taxonomy, catalogue, rules) -> None:
    products = {p.product_id for p in catalogue}
    assert set(rules.pinned) <= set(taxonomy.ids)
    assert {pid for pins in rules.pinned.values() for pid in pins} | set(rules.boosted_products) <= products
    assert set(rules.boosted_brands) | rules.excluded_brands <= {p.brand for p in catalogue}
    assert rules.excluded_categories <= {p.category for p in catalogue}


def test_the_rules_file_is_checked_when_loaded(tmp_path: Path) -> None:
    typo = tmp_path / "rules.json"
    typo.write_bytes(orjson.dumps({"excluded_brand": ["Oakline"]}))
    with pytest.raises(ValueError, match="unknown merchandising rules \\['excluded_brand'\\]"):
        MerchandisingRules.load(typo)
    typo.write_bytes(orjson.dumps({"price_ceiling_basis": "mean"}))
    with pytest.raises(ValueError, match="price_ceiling_basis"):
        MerchandisingRules.load(typo)
    typo.write_bytes(orjson.dumps({"price_ceiling_ratio": None}))
    assert MerchandisingRules.load(typo).price_ceiling([1.0, 9.0]) is None
