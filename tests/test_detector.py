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


# Lift mode: independent next-basket probabilities per intent (index 0 is browsing).
LIFT = DetectorConfig(0.2, 1, 1.01, "lift", lift_threshold=3.0, baseline_rate=0.5, baseline_floor=0.05)


def staples_then(news: list[float], staples: int = 6) -> list[list[float]]:
    """A shopper who always buys intent 1 (probability 0.9), then events whose intent 2 probability
    follows `news`."""
    return [[0.0, 0.9, 0.05, 0.0, 0.0]] * staples + [[0.0, 0.9, p, 0.0, 0.0] for p in news]


def test_lift_mode_ignores_the_staples_however_likely_and_announces_what_rises_above_its_own_level() -> None:
    detector = ShiftDetector(LIFT, BROWSING)
    # the staple (0.9) never lifts off its own average; intent 2 jumps from 0.05 to 0.3: lift 6
    assert detector.run(staples_then([0.05, 0.3, 0.3])) == [(7, Shift(None, 2, 0.0, 0.3))]


def test_lift_mode_needs_both_the_lift_and_the_probability() -> None:
    detector = ShiftDetector(LIFT, BROWSING)
    assert detector.run(staples_then([0.14])) == []  # lift 2.8: under 3
    assert detector.run(staples_then([0.19])) == []  # lift 3.8 but probability under 0.2


def test_lift_mode_measures_against_the_windows_own_average_which_catches_up() -> None:
    detector = ShiftDetector(LIFT, BROWSING)
    # a slow rise: each step is under 3 x the average of what came before
    assert detector.run(staples_then([0.1, 0.2, 0.35, 0.5])) == []


def test_a_new_window_announces_nothing_on_its_first_event() -> None:
    detector = ShiftDetector(LIFT, BROWSING)
    assert detector.run([[0.0, 0.1, 0.9, 0.0, 0.0]]) == []


def test_lift_state_round_trips_with_its_average() -> None:
    detector = ShiftDetector(LIFT, BROWSING)
    state = DetectorState()
    detector.update(state, [0.0, 0.9, 0.05, 0.0, 0.0])
    restored = DetectorState.from_list(state.to_list())
    assert restored.baseline == pytest.approx(state.baseline)
    assert detector.update(restored, [0.0, 0.9, 0.3, 0.0, 0.0]) == Shift(None, 2, 0.0, 0.3)


def test_a_config_round_trips_and_an_unknown_mode_is_refused() -> None:
    assert DetectorConfig.from_json(LIFT.to_json()) == LIFT
    assert DetectorConfig.from_json({"enter_threshold": 0.7, "confirm_events": 2, "instant_threshold": 0.9}).mode == (
        "distribution"
    )
    with pytest.raises(ValueError, match="detector mode 'ratio'"):
        DetectorConfig.from_json({**LIFT.to_json(), "mode": "ratio"})


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_lift_mode_over_a_whole_sequence_decides_exactly_as_event_by_event(seed: int) -> None:
    generator = np.random.default_rng(seed)
    values = generator.beta(0.3, 3.0, size=(400, 6))
    config = DetectorConfig(0.15, 2, 0.6, "lift", lift_threshold=2.5, baseline_rate=0.05, baseline_floor=0.02)
    detector = ShiftDetector(config, BROWSING)
    state = DetectorState()
    one_by_one = [(t, shift) for t, row in enumerate(values) if (shift := detector.update(state, row)) is not None]
    assert detector.run(values) == one_by_one
    assert len(one_by_one) > 5  # the sequence really exercises the detector
