"""The next-basket evaluation on a hand-made log whose answers are worked out by hand.

The log: 15 categories A..O, listed in the vocabulary in reverse (O..A) so that a tie broken by
vocabulary order would come out the other way round. A training-period household ("trainer")
makes A the most popular category and O the least: each of its baskets holds the first i
categories, twice for i = 1..15, so training popularity is A 30, B 28, ... J 12, K 10 (+1 below),
L 8, M 6, N 4, O 2. Validation starts 2017-09-01, test 2017-10-01.

h1 (segment "young | family"): 08-20 {K}; 09-28 {L} (its validation basket);
    10-02 {K, L, A} (test 1); 10-05 {J} (test 2).
h2 (no segment): 10-04 {A} (its first basket: not scored); 10-05 only uncategorised items (not
    scored, but it is h2's last basket); 10-06 {B, C} (test 3); 10-07 {O} (test 4; O maps to no
    intent, so this basket is scored on categories only).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pytest

from intent.datasets.baskets import Basket, LineItem
from training.nextbasket import (
    base_rate_within,
    baseline_scores,
    bootstrap_interval,
    bought_within,
    evaluate_next_baskets,
    format_table,
    scored_baskets,
)

LETTERS = "ABCDEFGHIJKLMNO"
CATEGORIES = list(reversed(LETTERS))
INTENT_OF: dict[str, str | None] = {letter: letter.lower() for letter in LETTERS} | {"O": None}
INTENTS = [letter.lower() for letter in LETTERS[:-1]]
VALIDATION_FROM = date(2017, 9, 1)
TEST_FROM = date(2017, 10, 1)
FAMILY = "young | family"


def basket(shopper: str, day: str, categories: str, segment: str | None = None, number: int = 0) -> Basket:
    at = datetime.fromisoformat(day).replace(hour=12, tzinfo=UTC).timestamp()
    items = tuple(LineItem(f"p-{c}", c, None, None, 1.0, 1) for c in categories)
    if not categories:  # a basket of uncategorised items (fuel, coupons, ...)
        items = (LineItem("p-fuel", None, None, None, 30.0, 1),)
    return Basket(shopper, f"{shopper}-{day}-{number}", at, items, segment)


def trainer() -> list[Basket]:
    return [
        basket("trainer", f"2017-08-{1 + size:02d}", LETTERS[:size], number=copy)
        for size in range(1, 16)
        for copy in range(2)
    ]


def shoppers() -> list[Basket]:
    return [
        basket("h1", "2017-08-20", "K", FAMILY),
        basket("h1", "2017-09-28", "L", FAMILY),
        basket("h1", "2017-10-02", "KLA", FAMILY),
        basket("h1", "2017-10-05", "J", FAMILY),
        basket("h2", "2017-10-04", "A"),
        basket("h2", "2017-10-05", ""),
        basket("h2", "2017-10-06", "BC"),
        basket("h2", "2017-10-07", "O"),
    ]


def evaluate(log: list[Basket] | None = None, **options: Any) -> dict[str, Any]:
    options.setdefault("draws", 200)
    return evaluate_next_baskets(
        log if log is not None else trainer() + shoppers(),
        CATEGORIES,
        INTENT_OF,
        INTENTS,
        VALIDATION_FROM,
        TEST_FROM,
        **options,
    )


# The protocol ----------------------------------------------------------------------------------


def test_a_scored_basket_is_in_the_period_with_an_earlier_basket_and_a_categorised_item() -> None:
    log = trainer() + shoppers()
    test = scored_baskets(log, VALIDATION_FROM, TEST_FROM, "test")
    assert [b.basket_id for b in test] == ["h1-2017-10-02-0", "h1-2017-10-05-0", "h2-2017-10-06-0", "h2-2017-10-07-0"]
    validation = scored_baskets(log, VALIDATION_FROM, TEST_FROM, "validation")
    assert [b.basket_id for b in validation] == ["h1-2017-09-28-0"]
    result = evaluate(log)
    assert result["test_baskets"] == 4
    assert result["households"] == 2


def test_category_recall_at_10_of_every_baseline_row_worked_by_hand() -> None:
    figures = evaluate(recency_decay=0.98)["category_recall_at_10"]
    # test 1 {K,L,A}: top sellers rank A..J (A: 1/3); h1's own K and L (once each, K first by
    # popularity) then A: 3/3; its last basket {L} then A..I: 2/3.
    # test 2 {J}: top sellers 1; own history K,L,A then B..H misses J: 0; last basket {K,L,A}: 0.
    # test 3 {B,C}: h2's last basket is uncategorised, so every row falls back on popularity: 1.
    # test 4 {O}: O is the least popular and h2 never bought it: 0 everywhere.
    assert figures["top_sellers"] == pytest.approx((1 / 3 + 1 + 1 + 0) / 4, abs=1e-4)
    assert figures["personal_frequency"] == pytest.approx((1 + 0 + 1 + 0) / 4, abs=1e-4)
    assert figures["personal_recency"] == pytest.approx((1 + 0 + 1 + 0) / 4, abs=1e-4)
    assert figures["last_basket"] == pytest.approx((2 / 3 + 0 + 1 + 0) / 4, abs=1e-4)


def test_equal_scores_rank_by_training_popularity_not_by_vocabulary_order() -> None:
    log = trainer() + shoppers()
    ids = [b.basket_id for b in scored_baskets(log, VALIDATION_FROM, TEST_FROM, "test")]
    flat = {basket_id: np.zeros(len(CATEGORIES)) for basket_id in ids}
    result = evaluate(log, recency_decay=0.98, extra_category_rows={"no_opinion": flat})
    # A row with no opinion ranks A..J, the top sellers; by vocabulary order it would rank O..F.
    assert result["category_recall_at_10"]["no_opinion"] == result["category_recall_at_10"]["top_sellers"]
    assert result["explore_category_recall_at_10"]["no_opinion"] == pytest.approx(5 / 8, abs=1e-4)


def test_explore_ranks_and_scores_only_what_the_household_did_not_buy_in_the_last_28_days() -> None:
    result = evaluate(recency_decay=0.98)
    explore = result["explore_category_recall_at_10"]
    # test 1: L was bought 09-28, so the truth is {K, A}: top sellers A..J 1/2, h1's history K first 1.
    # test 2: J new, ranked among B..J, M, N, O: top sellers B..J,M (K, L, A bought lately) 1.
    # test 3 {B, C} (A bought lately): 1. test 4 {O}: 0.
    assert result["baskets"]["explore_category_recall_at_10"] == 4
    assert explore["top_sellers"] == pytest.approx((1 / 2 + 1 + 1 + 0) / 4, abs=1e-4)
    assert explore["personal_frequency"] == pytest.approx((1 + 1 + 1 + 0) / 4, abs=1e-4)
    assert explore["last_basket"] == pytest.approx((1 / 2 + 1 + 1 + 0) / 4, abs=1e-4)


def test_a_basket_with_nothing_new_is_left_out_of_explore() -> None:
    log = [*trainer(), basket("h3", "2017-09-20", "AB"), basket("h3", "2017-10-03", "A")]
    result = evaluate(log, recency_decay=0.98)
    assert result["baskets"] == {
        "category_recall_at_10": 1,
        "explore_category_recall_at_10": 0,
        "intent_recall_at_5": 1,
        "intent_ndcg_at_5": 1,
        "explore_intent_recall_at_5": 0,
        "explore_intent_ndcg_at_5": 0,
    }
    assert result["explore_category_recall_at_10"]["top_sellers"] is None  # JSON null, not NaN
    assert "n/a" in format_table(result)


def test_segment_row_counts_its_group_and_every_row_is_repeated_on_households_with_a_segment() -> None:
    result = evaluate(recency_decay=0.98)
    subset = result["segment_households"]
    assert (subset["households"], subset["test_baskets"]) == (1, 2)  # h1: tests 1 and 2
    # The segment's baskets before the test date hold K and L once each: K, L, A..H.
    assert result["category_recall_at_10"]["segment"] == pytest.approx((1 + 0) / 2, abs=1e-4)
    assert subset["category_recall_at_10"]["segment"] == result["category_recall_at_10"]["segment"]
    assert subset["category_recall_at_10"]["top_sellers"] == pytest.approx((1 / 3 + 1) / 2, abs=1e-4)
    assert set(subset["category_recall_at_10"]) == set(result["category_recall_at_10"])


def test_intents_drop_unmapped_categories_and_score_recall_and_ndcg_at_5() -> None:
    result = evaluate(recency_decay=0.98)
    # Test 4 holds only O, mapped to no intent: scored on categories, not on intents.
    assert result["baskets"]["category_recall_at_10"] == 4
    assert result["baskets"]["intent_recall_at_5"] == 3
    # Intents are the categories in lower case here, so test 1's truth is {k, l, a}.
    # top sellers a..e: a at rank 1: recall 1/3, NDCG 1 / (1 + 1/log2(3) + 1/2).
    # test 2 {j}: a..e: 0. test 3 {b, c}: ranks 2 and 3 of a..e: recall 1, NDCG (1/log2 3 + 1/2) / (1 + 1/log2 3).
    ideal_3 = 1 + 1 / np.log2(3) + 1 / 2
    ndcg_3 = (1 / np.log2(3) + 1 / 2) / (1 + 1 / np.log2(3))
    assert result["intent_recall_at_5"]["top_sellers"] == pytest.approx((1 / 3 + 0 + 1) / 3, abs=1e-4)
    assert result["intent_ndcg_at_5"]["top_sellers"] == pytest.approx((1 / ideal_3 + 0 + ndcg_3) / 3, abs=1e-4)
    # h1's own history on test 1: k, l, a at ranks 1-3: NDCG 1.
    # its last basket {l} then a..: l and a at ranks 1 and 2.
    last = (1 + 1 / np.log2(3)) / ideal_3
    assert result["intent_ndcg_at_5"]["last_basket"] == pytest.approx((last + 0 + ndcg_3) / 3, abs=1e-4)


def test_the_recency_decay_is_chosen_on_validation_and_test_baskets_cannot_move_it() -> None:
    chosen = evaluate()["recency_decay"]
    assert set(chosen["validation"]["category_recall_at_10"]) == {"0.8", "0.9", "0.95", "0.98", "0.99"}
    figures = chosen["validation"]["category_recall_at_10"]
    assert figures[str(chosen["categories"])] == max(figures.values())
    more_tests = [*trainer(), *shoppers(), *(basket("h2", f"2017-11-{day:02d}", "NOM") for day in range(1, 20))]
    assert evaluate(more_tests)["recency_decay"] == chosen


def test_intents_take_the_category_decay_when_no_validation_basket_holds_an_intent() -> None:
    log = [
        *trainer(),
        basket("h4", "2017-08-10", "A"),
        basket("h4", "2017-09-10", "O"),
        basket("h4", "2017-10-03", "A"),
    ]
    chosen = evaluate(log)["recency_decay"]
    assert chosen["intents"] == chosen["categories"]
    assert chosen["validation"]["intent_recall_at_5"] == {}


def test_a_model_row_must_cover_every_scored_basket_and_use_known_names() -> None:
    with pytest.raises(ValueError, match="no scores for 4 scored baskets"):
        evaluate(recency_decay=0.98, extra_category_rows={"model": {}})
    log = trainer() + shoppers()
    ids = [b.basket_id for b in scored_baskets(log, VALIDATION_FROM, TEST_FROM, "test")]
    with pytest.raises(ValueError, match="does not have 15 finite scores"):
        evaluate(log, recency_decay=0.98, extra_category_rows={"model": {i: np.full(15, np.nan) for i in ids}})
    with pytest.raises(ValueError, match="does not have 14 finite scores"):
        evaluate(log, recency_decay=0.98, extra_intent_rows={"model": {i: np.zeros(15) for i in ids}})
    with pytest.raises(ValueError, match="not in the vocabulary"):
        evaluate([*trainer(), basket("h9", "2017-10-01", "Z")], recency_decay=0.98)
    with pytest.raises(ValueError, match="outside the intent list"):
        evaluate_next_baskets(shoppers(), CATEGORIES, {"A": "coffee"}, INTENTS, VALIDATION_FROM, TEST_FROM)
    with pytest.raises(ValueError, match="validation_from must come before test_from"):
        evaluate_next_baskets(shoppers(), CATEGORIES, INTENT_OF, INTENTS, TEST_FROM, VALIDATION_FROM)


def test_a_baseline_passed_back_as_a_row_scores_exactly_as_the_baseline() -> None:
    log = trainer() + shoppers()
    args = (log, CATEGORIES, INTENT_OF, INTENTS, VALIDATION_FROM, TEST_FROM)
    recency = baseline_scores(*args, row="personal_recency", recency_decay=0.9)
    segment = baseline_scores(*args, row="segment", space="intent")
    assert set(segment) == {"h1-2017-10-02-0", "h1-2017-10-05-0"}  # only households with a segment
    assert segment["h1-2017-10-02-0"][INTENTS.index("k")] == 1.0
    result = evaluate(log, recency_decay=0.9, extra_category_rows={"copy": recency})
    for metric in ("category_recall_at_10", "explore_category_recall_at_10"):
        assert result[metric]["copy"] == result[metric]["personal_recency"]
        assert result[metric]["copy_ci"] == result[metric]["personal_recency_ci"]


def test_the_table_shows_every_row_with_its_interval_and_the_segment_households() -> None:
    table = format_table(evaluate(recency_decay=0.98))
    assert "4 baskets of 2 households" in table
    for row in ("top_sellers", "personal_frequency", "personal_recency", "last_basket", "segment households (1)"):
        assert row in table
    assert "0.583 [" in table  # top sellers' category recall, 7/12


# Intervals -------------------------------------------------------------------------------------


def test_the_bootstrap_interval_holds_the_estimate_and_collapses_when_households_are_alike() -> None:
    rng = np.random.default_rng(7)
    households = np.repeat(np.arange(50), 4)
    mean, low, high = bootstrap_interval(rng.random(200), households)
    assert low < mean < high
    alike = np.tile([1.0, 0.0, 0.5, 0.5], 50)  # every household: the same four baskets
    mean, low, high = bootstrap_interval(alike, households)
    assert (low, mean, high) == pytest.approx((0.5, 0.5, 0.5))


def test_every_figure_has_an_interval_around_it() -> None:
    result = evaluate(recency_decay=0.98)
    for metric in ("category_recall_at_10", "intent_recall_at_5", "intent_ndcg_at_5"):
        for row in ("top_sellers", "personal_frequency", "personal_recency", "last_basket", "segment"):
            low, high = result[metric][f"{row}_ci"]
            assert low <= result[metric][row] <= high


# Helpers for suggestions and shifts ------------------------------------------------------------


def household_log() -> list[Basket]:
    return [
        basket("h", "2017-10-01", "A"),
        basket("h", "2017-10-03", "B"),
        basket("h", "2017-10-09", "A"),
        basket("h", "2017-10-20", "C"),
        basket("h", "2017-10-21", "A"),
    ]


def holds_a(candidate: Basket) -> bool:
    return "A" in candidate.categories


def test_bought_within_looks_strictly_after_the_trigger_and_up_to_the_horizon() -> None:
    log = household_log()
    first = log[0].timestamp
    assert not bought_within(log, first, 7.0, holds_a)  # the trigger itself does not count
    assert bought_within(log, first, 8.0, holds_a)  # 10-09 is 8 days later
    assert bought_within(log, log[1].timestamp, 7.0, holds_a)


def test_the_7_day_base_rate_is_the_share_of_baskets_followed_by_the_intent_within_7_days() -> None:
    # 10-01: next A on 10-09 (8 days): no. 10-03: 10-09 yes. 10-09: 10-21 (12 days) no.
    # 10-20: 10-21 yes. 10-21: nothing later. 2 of 5.
    assert base_rate_within(household_log(), holds_a) == pytest.approx(2 / 5)
    assert base_rate_within(household_log(), holds_a, days=8.0) == pytest.approx(3 / 5)
    assert np.isnan(base_rate_within([], holds_a))
