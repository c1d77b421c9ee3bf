from __future__ import annotations

import numpy as np
import pytest

from intent.detector import DetectorConfig, DetectorState, Shift, ShiftDetector

INTENTS = 5
BROWSING = 0


def seeded_distributions(segments: list[tuple[int, int]], seed: int, strength: float) -> np.ndarray:
    """A stream of noisy distributions: (intent, length) segments, Dirichlet noise around them."""
    rng = np.random.default_rng(seed)
    rows = []
    for intent, length in segments:
        for _ in range(length):
            concentration = np.full(INTENTS, 1.0)
            concentration[intent] = strength
            rows.append(rng.dirichlet(concentration))
    return np.array(rows)


def test_seeded_stream_shifts_at_exactly_the_expected_events() -> None:
    distributions = seeded_distributions([(1, 12), (0, 6), (3, 10), (2, 9)], seed=11, strength=20.0)
    detector = ShiftDetector(DetectorConfig(0.6, 2, 0.9), BROWSING)
    shifts = detector.run(distributions)
    assert [(at, s.from_intent, s.to_intent) for at, s in shifts] == [(1, None, 1), (19, 1, 3), (29, 3, 2)]


def test_weak_evidence_needs_confirmation_and_strong_evidence_does_not() -> None:
    detector = ShiftDetector(DetectorConfig(0.6, 2, 0.9), BROWSING)
    weak = [[0.1, 0.7, 0.1, 0.05, 0.05]] * 3
    strong = [[0.02, 0.95, 0.01, 0.01, 0.01]]
    assert [at for at, _ in detector.run(weak)] == [1]
    assert [at for at, _ in detector.run(strong)] == [0]


def test_a_single_stray_event_raises_no_alarm() -> None:
    detector = ShiftDetector(DetectorConfig(0.6, 2, 0.95), BROWSING)
    calm = [0.05, 0.85, 0.04, 0.03, 0.03]
    stray = [0.05, 0.2, 0.05, 0.65, 0.05]
    shifts = detector.run([calm, calm, stray, calm, calm])
    assert [(at, s.to_intent) for at, s in shifts] == [(1, 1)]


def test_browsing_is_never_committed_to() -> None:
    detector = ShiftDetector(DetectorConfig(0.5, 1, 0.9), BROWSING)
    shifts = detector.run([[0.99, 0.0025, 0.0025, 0.0025, 0.0025]] * 5)
    assert shifts == []


def test_the_state_round_trips_through_a_table_value() -> None:
    detector = ShiftDetector(DetectorConfig(0.6, 2, 0.99), BROWSING)
    state = DetectorState()
    detector.update(state, [0.1, 0.7, 0.1, 0.05, 0.05])
    restored = DetectorState.from_list(state.to_list())
    assert restored == state
    assert detector.update(restored, [0.1, 0.7, 0.1, 0.05, 0.05]) == Shift(None, 1, 0.0, 0.7)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_detector_is_deterministic(seed: int) -> None:
    distributions = seeded_distributions([(2, 15), (4, 15)], seed=seed, strength=8.0)
    detector = ShiftDetector(DetectorConfig(0.6, 2, 0.9), BROWSING)
    assert detector.run(distributions) == detector.run(distributions.copy())


def test_the_example_in_the_module_documentation_holds() -> None:
    import doctest

    import intent.detector

    assert doctest.testmod(intent.detector).failed == 0
