"""A known shopper's purchase memory and the category ranking the product acts on.

A next-basket model (`IntentModel.target == "next_basket"`) predicts, for each category, whether the
shopper's next basket holds it. On grocery logs the strongest single signal is still what the
household keeps buying (Li et al., "A Next Basket Recommendation Reality Check", 2023), so the
ranking blends three terms, with weights the training run tunes on its validation month and stores
in the model's metadata (`ranking`):

    score(c) = decay x recency(c) + popularity_weight x popularity(c) / max(popularity)
               + model_weight x P(next basket holds c)

`recency(c)` sums `decay ** k` over the household's baskets that held c, k baskets ago (the last
basket counts 1 here, decay once more in the score). It lives in the shopper window, so it is
forgotten with the window: the evaluation scores exactly what the worker would serve.
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
    model_weight: float = 0.0

    def to_json(self) -> dict[str, float]:
        return {"decay": self.decay, "popularity_weight": self.popularity_weight, "model_weight": self.model_weight}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RankingWeights:
        return cls(float(raw["decay"]), float(raw["popularity_weight"]), float(raw["model_weight"]))


@dataclass(slots=True)
class PurchaseHistory:
    """Decayed counts of the baskets that held each category (normalised names)."""

    counts: dict[str, float] = field(default_factory=dict)

    def add_basket(self, categories: Iterable[str], decay: float) -> None:
        """A basket ended: older baskets count `decay` times less, this one's categories 1 more."""
        kept = {}
        for category, count in self.counts.items():
            if count * decay >= FORGET_BELOW:
                kept[category] = count * decay
        for category in set(categories):
            kept[category] = kept.get(category, 0.0) + 1.0
        self.counts = kept

    def to_json(self) -> dict[str, float]:
        return {category: round(count, 4) for category, count in self.counts.items()}

    @classmethod
    def from_json(cls, raw: Mapping[str, float] | None) -> PurchaseHistory:
        return cls(dict(raw or {}))


def category_scores(
    history: PurchaseHistory,
    categories: Sequence[str],
    popularity: np.ndarray,
    weights: RankingWeights,
    model_probabilities: np.ndarray | None,
) -> np.ndarray:
    """The blended score of every category of `categories` (the model's category head order)."""
    index = {category: position for position, category in enumerate(categories)}
    recency = np.zeros(len(categories), dtype=np.float64)
    for category, count in history.counts.items():
        position = index.get(category)
        if position is not None:
            recency[position] = count
    scores = weights.decay * recency + weights.popularity_weight * popularity / max(float(popularity.max()), 1e-12)
    if model_probabilities is not None and weights.model_weight:
        scores = scores + weights.model_weight * model_probabilities
    return scores
