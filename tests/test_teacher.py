"""The distillation targets: the Bayes filter's posterior on exactly what the model sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from intent.features import FEATURE_COLUMNS, FIRST_KNOWN_ID, OUT_OF_VOCABULARY, Featurizer, padded_batches
from intent.simulate import Simulator
from training.data import encode, from_simulation
from training.simulate import bayes_filter, observations
from training.teacher import BayesTeacher
from training.train import IGNORE, event_targets, hide_some_categories

CATEGORY = FEATURE_COLUMNS.index("category")


def test_the_teacher_is_the_bayes_filter_with_hidden_categories_hidden_from_it_too() -> None:
    simulator = Simulator(seed=21)
    world = simulator.world
    featurizer = Featurizer(world.vocabulary)
    sequences = from_simulation(simulator.shoppers(40), world.taxonomy)
    assert {s.segment for s in sequences} > {None}, "some shoppers should carry a segment prior"
    teacher = BayesTeacher(world, featurizer.vocabulary)
    torch.manual_seed(0)
    hidden_events = 0
    for positions, batch in padded_batches(encode(featurizer, sequences), 16):
        seen = hide_some_categories(torch.from_numpy(batch), rate=0.2)
        posteriors = teacher.posteriors(seen).numpy()
        for row, i in enumerate(positions):
            length = len(sequences[i].events)
            categories, session_starts = observations(world, featurizer, sequences[i].events)
            hidden = (seen[row, :length, CATEGORY] == OUT_OF_VOCABULARY).numpy() & (
                batch[row, :length, CATEGORY] >= FIRST_KNOWN_ID
            )
            categories[hidden] = -1
            hidden_events += int(hidden.sum())
            expected = bayes_filter(world, categories, session_starts, sequences[i].segment)
            assert posteriors[row, :length] == pytest.approx(expected, abs=1e-6)
    assert hidden_events > 0


def test_an_event_target_mixes_the_teacher_posterior_with_the_label_and_padding_has_none() -> None:
    posterior = torch.tensor([[[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]])
    labels = torch.tensor([[1, IGNORE]])
    features = torch.zeros(1, 2, len(FEATURE_COLUMNS), dtype=torch.int64)

    targets = event_targets(features, labels, 3, lambda x: posterior, distillation_weight=0.75)

    assert targets[0, 0].tolist() == pytest.approx([0.45, 0.475, 0.075])
    assert targets[0, 1].tolist() == [0.0, 0.0, 0.0]


def test_without_a_teacher_the_target_is_the_label() -> None:
    labels = torch.tensor([[2, 0]])
    features = torch.zeros(1, 2, len(FEATURE_COLUMNS), dtype=torch.int64)
    targets = event_targets(features, labels, 3, None, distillation_weight=0.75)
    assert np.array_equal(targets.numpy(), [[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
