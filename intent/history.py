"""A known shopper's purchase memory and the category ranking the product acts on.

A next-basket model (`IntentModel.target == "next_basket"`) predicts, for each category and each
intent, whether the shopper's next basket holds it. On grocery logs the strongest single signal is still what the
household keeps buying (Li et al., "A Next Basket Recommendation Reality Check", 2023), so the
ranking blends three terms, with weights the training run tunes on its validation month and stores
in the model's metadata (`ranking`):

    score(c) = decay x recency(c) + popularity_weight x popularity(c) / max(popularity)
               + model_weight x P(next basket holds c)

`recency(c)` sums `decay ** k` over the household's baskets that held c, k baskets ago (the last
basket counts 1 here, decay once more in the score). Intents are ranked the same way, over the
intents of the basket's categories, with their own model weight. The memory lives in the shopper
window, so it is forgotten with the window: the evaluation scores exactly what the worker serves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A count this small (about 230 baskets ago at 0.98) no longer moves a ranking; dropping it bounds
# the memory a long-lived shopper's window holds.
FORGET_BELOW = 0.01


@dataclass(frozen=True, slots=True)
class RankingWeights:
    decay: float = 0.98
    popularity_weight: float = 0.3
    model_weight: float = 0.0  # of the category head
    intent_model_weight: float = 0.0

    def to_json(self) -> dict[str, float]:
        return {
            "decay": self.decay,
            "popularity_weight": self.popularity_weight,
            "model_weight": self.model_weight,
            "intent_model_weight": self.intent_model_weight,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RankingWeights:
        return cls(
            float(raw["decay"]),
            float(raw["popularity_weight"]),
            float(raw["model_weight"]),
            float(raw.get("intent_model_weight", 0.0)),
        )


@dataclass(slots=True)
class PurchaseHistory:
    """Decayed counts of the baskets that held each category (normalised names) and each intent."""

    counts: dict[str, float] = field(default_factory=dict)
    intent_counts: dict[str, float] = field(default_factory=dict)

    def add_basket(self, categories: Iterable[str], decay: float, intents: Iterable[str] = ()) -> None:
        """A basket ended: older baskets count `decay` times less, this one's categories (and
        intents) 1 more."""
        self.counts = _added(self.counts, categories, decay)
        self.intent_counts = _added(self.intent_counts, intents, decay)

    def to_json(self) -> dict[str, dict[str, float]]:
        return {
            "c": {category: round(count, 4) for category, count in self.counts.items()},
            "i": {intent: round(count, 4) for intent, count in self.intent_counts.items()},
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Mapping[str, float]] | None) -> PurchaseHistory:
        raw = raw or {}
        return cls(dict(raw.get("c", {})), dict(raw.get("i", {})))


def _added(counts: dict[str, float], names: Iterable[str], decay: float) -> dict[str, float]:
    kept = {name: count * decay for name, count in counts.items() if count * decay >= FORGET_BELOW}
    for name in set(names):
        kept[name] = kept.get(name, 0.0) + 1.0
    return kept


def category_scores(
    history: PurchaseHistory,
    categories: Sequence[str],
    popularity: np.ndarray,
    weights: RankingWeights,
    model_probabilities: np.ndarray | None,
) -> np.ndarray:
    """The blended score of every category of `categories` (the model's category head order)."""
    return _blend(
        history.counts,
        categories,
        popularity,
        weights.decay,
        weights.popularity_weight,
        weights.model_weight,
        model_probabilities,
    )


def intent_scores(
    history: PurchaseHistory,
    intents: Sequence[str],
    popularity: np.ndarray,
    weights: RankingWeights,
    model_probabilities: np.ndarray | None,
) -> np.ndarray:
    """The blended score of every intent of `intents` (the model's intent order)."""
    return _blend(
        history.intent_counts,
        intents,
        popularity,
        weights.decay,
        weights.popularity_weight,
        weights.intent_model_weight,
        model_probabilities,
    )


def _blend(
    counts: Mapping[str, float],
    names: Sequence[str],
    popularity: np.ndarray,
    decay: float,
    popularity_weight: float,
    model_weight: float,
    model_probabilities: np.ndarray | None,
) -> np.ndarray:
    index = {name: position for position, name in enumerate(names)}
    recency = np.zeros(len(names), dtype=np.float64)
    for name, count in counts.items():
        position = index.get(name)
        if position is not None:
            recency[position] = count
    scores = decay * recency + popularity_weight * popularity / max(float(popularity.max()), 1e-12)
    if model_probabilities is not None and model_weight:
        scores = scores + model_weight * model_probabilities
    return scores
