"""Training's side of the simulator (`intent.simulate`): the Bayes-optimal filter over its latent
intent chain, the reference every model is scored against and the teacher's posterior, and the
labelled training-file format its shoppers are written in."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from intent.events import ShopperEvent
from intent.features import Featurizer
from intent.simulate import SESSION_GAP_SECONDS, SimulatedShopper, World


def observations(world: World, featurizer: Featurizer, events: Sequence[ShopperEvent]) -> tuple[np.ndarray, np.ndarray]:
    """What the generative process lets an observer see: the category index of each event
    (-1 for none) and whether the event starts a session."""
    index = {category: position for position, category in enumerate(world.categories)}
    categories = np.full(len(events), -1, dtype=np.int64)
    session_starts = np.zeros(len(events), dtype=bool)
    previous = None
    for position, event in enumerate(events):
        category = featurizer.category_of(event)
        categories[position] = index.get(category, -1) if category else -1
        session_starts[position] = previous is None or event.timestamp - previous > SESSION_GAP_SECONDS
        previous = event.timestamp
    return categories, session_starts


def bayes_filter(world: World, categories: np.ndarray, session_starts: np.ndarray, segment: str | None) -> np.ndarray:
    """The forward algorithm: P(z_t | observations up to t) for every t, shape (T, intents)."""
    regime = world.regime
    prior = world.segment_priors.get(segment, world.segment_priors[None])
    posteriors = np.empty((len(categories), len(prior)))
    belief = prior
    for t, (category, starts) in enumerate(zip(categories, session_starts, strict=True)):
        if t:
            switch = regime.session_switch if starts else regime.event_switch
            belief = (1 - switch) * belief + switch * (belief @ world.transition)
        if category >= 0:
            belief = belief * world.emission[:, category]
        belief = belief / belief.sum()
        posteriors[t] = belief
    return posteriors


def iter_jsonl_records(shoppers: Sequence[SimulatedShopper]) -> Iterator[dict[str, Any]]:
    """Events with their true intent under `intent`: the labelled training-file format."""
    for shopper in shoppers:
        for event, intent in zip(shopper.events, shopper.intents, strict=True):
            yield {**event, "intent": intent}
