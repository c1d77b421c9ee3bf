"""A retailer's purchase log -> next-basket training sequences.

Each household's baskets become the events the stream sees (`intent.datasets.baskets.visit_events`),
encoded by the runtime's own featurizer. The target after every event is what the household did
next: the intents and the categories of its *next* basket, learnt from the log itself rather than
from a label copied from the current event (that label is the last-category baseline in disguise).

A household's events are cut where the worker's shopper window would have expired (a gap longer
than the domain's `shopper_window_days`): the worker starts such a household from an empty window,
so training and evaluation do too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from intent.datasets.baskets import Basket, visit_events
from intent.events import event_from_dict, normalise_category
from intent.features import Featurizer

NO_TARGET = -1


@dataclass
class PurchaseSequence:
    """One household's events from an empty window to its expiry (or the end of the log)."""

    shopper_id: str
    features: np.ndarray  # (events, columns) int64
    basket_of_event: np.ndarray  # (events,) the position in `PurchaseLog.baskets` of each event's basket
    next_basket: np.ndarray  # (events,) the position of the household's next basket, or NO_TARGET


@dataclass
class PurchaseLog:
    baskets: list[Basket]  # in time order
    categories: tuple[str, ...]  # the category head's vocabulary (normalised names)
    intents: tuple[str, ...]
    category_targets: np.ndarray  # (baskets, categories) bool
    intent_targets: np.ndarray  # (baskets, intents) bool
    sequences: list[PurchaseSequence]

    def basket_position(self) -> dict[str, int]:
        return {basket.basket_id: position for position, basket in enumerate(self.baskets)}


def build_purchase_log(
    baskets: Sequence[Basket],
    featurizer: Featurizer,
    categories: Sequence[str],
    intents: Sequence[str],
    intent_of: Callable[[str], str | None],
    window_days: float,
) -> PurchaseLog:
    """Encode every household's baskets. `intent_of` maps a normalised category to an intent (None:
    no intent); `categories` is the category head's vocabulary."""
    ordered = sorted(baskets, key=lambda basket: (basket.timestamp, basket.basket_id))
    category_index = {category: position for position, category in enumerate(categories)}
    intent_index = {intent: position for position, intent in enumerate(intents)}
    category_targets = np.zeros((len(ordered), len(categories)), dtype=bool)
    intent_targets = np.zeros((len(ordered), len(intents)), dtype=bool)
    by_shopper: dict[str, list[int]] = defaultdict(list)
    for position, basket in enumerate(ordered):
        by_shopper[basket.shopper_id].append(position)
        for category in map(normalise_category, basket.categories):
            if category in category_index:
                category_targets[position, category_index[category]] = True
            intent = intent_of(category)
            if intent is not None and intent in intent_index:
                intent_targets[position, intent_index[intent]] = True

    span = window_days * 86400
    sequences = []
    for shopper_id, positions in by_shopper.items():
        rows: list[list[int]] = []
        basket_of_event: list[int] = []
        next_basket: list[int] = []
        previous_time: float | None = None
        order_time = float("-inf")
        events = visit_events(ordered[position] for position in positions)
        for k, position in enumerate(positions):
            basket = ordered[position]
            if rows and basket.timestamp - order_time > span:  # the worker's window expired here
                sequences.append(_sequence(shopper_id, rows, basket_of_event, next_basket))
                rows, basket_of_event, next_basket, previous_time = [], [], [], None
            following = positions[k + 1] if k + 1 < len(positions) else NO_TARGET
            for _ in range(len(basket.items) + 1):  # its line items, then its order
                event = event_from_dict(next(events))
                rows.append(featurizer.encode(event, previous_time))
                previous_time = order_time = event.timestamp
                basket_of_event.append(position)
                next_basket.append(following)
        sequences.append(_sequence(shopper_id, rows, basket_of_event, next_basket))
    return PurchaseLog(ordered, tuple(categories), tuple(intents), category_targets, intent_targets, sequences)


def _sequence(shopper_id: str, rows: list[list[int]], baskets: list[int], following: list[int]) -> PurchaseSequence:
    return PurchaseSequence(
        shopper_id,
        np.asarray(rows, dtype=np.int64),
        np.asarray(baskets, dtype=np.int64),
        np.asarray(following, dtype=np.int64),
    )
