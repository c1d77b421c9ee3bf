"""Soft targets for training on simulated shoppers: the Bayes filter's posterior, as the model sees.

A hard label says which intent the shopper had; right after a switch no observer can know it yet.
The Bayes-optimal filter (`training.simulate.bayes_filter`) says how sure anyone could be after
the events so far, which is exactly what the model should output, so training on it (knowledge
distillation) teaches the timing of a shift's evidence instead of making the model guess it from
rare examples. The teacher reads the model's own input rows, after training has hidden some
categories as out-of-vocabulary, so it never knows more than the student.
"""

from __future__ import annotations

import numpy as np
import torch

from intent.features import FEATURE_COLUMNS, FIRST_KNOWN_ID, GAP_EDGES, Vocabulary
from intent.simulate import SESSION_GAP_SECONDS, World

CATEGORY_COLUMN = FEATURE_COLUMNS.index("category")
GAP_COLUMN = FEATURE_COLUMNS.index("gap_bucket")
SEGMENT_COLUMN = FEATURE_COLUMNS.index("segment")
# A gap bucket above this one is a gap longer than SESSION_GAP_SECONDS: a new session.
LAST_IN_SESSION_GAP_BUCKET = 1 + GAP_EDGES.index(SESSION_GAP_SECONDS)


class BayesTeacher:
    """`bayes_filter` over padded feature batches, vectorised across the batch."""

    def __init__(self, world: World, vocabulary: Vocabulary) -> None:
        intents = len(world.taxonomy.ids)
        world_category = {category: position for position, category in enumerate(world.categories)}
        # One emission row per category id; ids without a simulated category (absent, unknown,
        # hidden) are no evidence, as `bayes_filter` skips category -1.
        emission = np.ones((FIRST_KNOWN_ID + len(vocabulary.categories), intents))
        for offset, category in enumerate(vocabulary.categories):
            if category in world_category:
                emission[FIRST_KNOWN_ID + offset] = world.emission[:, world_category[category]]
        # One prior per segment id; a shopper without a known segment gets the plain prior.
        priors = np.tile(world.segment_priors[None], (FIRST_KNOWN_ID + len(vocabulary.segments), 1))
        for offset, segment in enumerate(vocabulary.segments):
            priors[FIRST_KNOWN_ID + offset] = world.segment_priors.get(segment, world.segment_priors[None])
        self.emission = torch.from_numpy(emission)
        self.priors = torch.from_numpy(priors)
        self.transition = torch.from_numpy(world.transition)
        self.event_switch = world.regime.event_switch
        self.session_switch = world.regime.session_switch

    def posteriors(self, features: torch.Tensor) -> torch.Tensor:
        """features (batch, time, columns) -> P(intent after each event | events so far),
        (batch, time, intents) float32. Rows past a sequence's end (zero padding) are meaningless."""
        evidence = self.emission[features[..., CATEGORY_COLUMN]]
        switch = torch.where(
            features[..., GAP_COLUMN] > LAST_IN_SESSION_GAP_BUCKET, self.session_switch, self.event_switch
        ).to(torch.float64)[..., None]
        belief = self.priors[features[:, 0, SEGMENT_COLUMN]]
        posteriors = []
        for t in range(features.shape[1]):
            if t:
                belief = (1 - switch[:, t]) * belief + switch[:, t] * (belief @ self.transition)
            belief = belief * evidence[:, t]
            belief = belief / belief.sum(dim=-1, keepdim=True)
            posteriors.append(belief)
        return torch.stack(posteriors, dim=1).to(torch.float32)
