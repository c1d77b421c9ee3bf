"""The purchase memory a shopper window keeps and the category ranking a next-basket model acts on."""

from __future__ import annotations

import numpy as np
import pytest

from intent.history import FORGET_BELOW, PurchaseHistory, RankingWeights, category_scores


def test_each_basket_counts_once_and_older_baskets_fade_by_the_decay() -> None:
    history = PurchaseHistory()
    history.add_basket(["milk", "milk", "bread"], decay=0.5)
    history.add_basket(["milk"], decay=0.5)
    assert history.counts == {"milk": 1.5, "bread": 0.5}


def test_a_basket_without_categories_still_makes_the_others_one_basket_older() -> None:
    history = PurchaseHistory({"milk": 1.0})
    history.add_basket([], decay=0.5)
    assert history.counts == {"milk": 0.5}


def test_counts_too_faint_to_move_a_ranking_are_forgotten() -> None:
    history = PurchaseHistory({"candles": FORGET_BELOW * 1.5})
    history.add_basket(["milk"], decay=0.5)
    assert history.counts == {"milk": 1.0}


def test_the_ranking_is_the_evaluators_recency_row_plus_the_models_term() -> None:
    """decay x recency (the last basket counting decay once) + 0.3 x popularity / max, as
    training.nextbasket's personal_recency row, then the model's probability times its weight."""
    history = PurchaseHistory()
    history.add_basket(["tea"], decay=0.9)  # two baskets ago
    history.add_basket(["coffee"], decay=0.9)  # the last basket
    categories = ("coffee", "soup", "tea")
    popularity = np.array([0.2, 0.4, 0.1])
    without = category_scores(history, categories, popularity, RankingWeights(0.9, 0.3, 2.0), None)
    assert without == pytest.approx([0.9 + 0.3 * 0.5, 0.3 * 1.0, 0.81 + 0.3 * 0.25])
    model = np.array([0.1, 0.0, 0.5])
    with_model = category_scores(history, categories, popularity, RankingWeights(0.9, 0.3, 2.0), model)
    assert with_model == pytest.approx(without + 2.0 * model)


def test_a_history_survives_its_json_form() -> None:
    history = PurchaseHistory()
    history.add_basket(["milk", "eggs"], decay=0.98)
    assert PurchaseHistory.from_json(history.to_json()).counts == history.counts
    assert PurchaseHistory.from_json(None).counts == {}
