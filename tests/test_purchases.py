"""A purchase log as next-basket training sequences: the visits the stream sees, targets from what
the household did next, windows cut where the worker's would expire."""

from __future__ import annotations

import numpy as np

from intent.datasets.baskets import Basket, LineItem, visit_events
from intent.events import event_from_dict
from intent.features import Featurizer, build_vocabulary
from training.purchases import NO_TARGET, build_purchase_log

DAY = 86400.0
CATEGORIES = ("coffee", "soup", "tea")
INTENT_OF = {"coffee": "hot_drinks", "tea": "hot_drinks", "soup": "meals"}.get


def basket(shopper: str, number: int, day: float, *categories: str) -> Basket:
    items = tuple(LineItem(f"p-{c}", c, None, None, 1.0, 1) for c in categories)
    return Basket(shopper, f"{shopper}-b{number}", 1_500_000_000 + day * DAY, items, None)


def log_of(baskets: list[Basket], window_days: float = 10.0):
    featurizer = Featurizer(build_vocabulary((), (), extra_categories=CATEGORIES))
    return featurizer, build_purchase_log(
        baskets, featurizer, CATEGORIES, ("hot_drinks", "meals"), INTENT_OF, window_days
    )


def test_every_event_of_a_basket_targets_the_households_next_basket() -> None:
    baskets = [basket("a", 1, 0, "coffee", "soup"), basket("a", 2, 3, "tea"), basket("a", 3, 5, "soup")]
    _, log = log_of(baskets)
    (sequence,) = log.sequences
    # two line items + the order, one item + the order, one item + the order
    assert sequence.basket_of_event.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert sequence.next_basket.tolist() == [1, 1, 1, 2, 2, NO_TARGET, NO_TARGET]
    assert log.category_targets[1].tolist() == [False, False, True]  # basket 2 holds tea
    assert log.intent_targets[2].tolist() == [False, True]  # basket 3: meals


def test_features_are_the_runtime_featurizers_rows_for_the_visits_the_stream_sees() -> None:
    baskets = [basket("a", 1, 0, "coffee"), basket("a", 2, 1, "tea", "soup")]
    featurizer, log = log_of(baskets)
    events = [event_from_dict(raw) for raw in visit_events(baskets)]
    assert np.array_equal(log.sequences[0].features, featurizer.encode_sequence(events))


def test_a_household_away_longer_than_the_window_starts_a_new_sequence_that_the_old_one_still_targets() -> None:
    baskets = [basket("a", 1, 0, "coffee"), basket("a", 2, 30, "tea"), basket("a", 3, 31, "tea")]
    _, log = log_of(baskets, window_days=10.0)
    first, second = log.sequences
    assert first.basket_of_event.tolist() == [0, 0]
    assert first.next_basket.tolist() == [1, 1]  # what the household did next, window or not
    assert second.basket_of_event.tolist() == [1, 1, 2, 2]
    assert second.features[0].tolist() == log_of([baskets[1]])[1].sequences[0].features[0].tolist()


def test_households_are_separate_sequences_and_baskets_are_in_time_order() -> None:
    baskets = [basket("b", 1, 2, "soup"), basket("a", 1, 0, "coffee"), basket("a", 2, 1, "tea")]
    _, log = log_of(baskets)
    assert [b.basket_id for b in log.baskets] == ["a-b1", "a-b2", "b-b1"]
    assert sorted(s.shopper_id for s in log.sequences) == ["a", "b"]
