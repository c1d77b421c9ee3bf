"""Intent distributions -> intent shifts, with hysteresis.

Two kinds of model feed it (`DetectorConfig.mode`):
- "distribution": a distribution over intents (the demo's model: what is the shopper after now);
- "lift": independent next-basket probabilities per intent (a model learnt from purchase logs:
  will the next basket hold it). A basket holds several intents at once, so "the most likely
  intent" is mostly the shopper's weekly staples. What is news is an intent whose probability
  rises well above the shopper's own usual level: the detector keeps, per window, a slow
  exponential average of the model's probabilities (`baseline_rate` per event) and scores each
  intent by its lift, probability / average; an intent becomes a candidate when its lift reaches
  `lift_threshold` and its probability `enter_threshold`, and is confirmed as below.

The detector holds a committed intent per window. It moves to a new intent when that intent is
the most likely actionable one with probability >= `enter_threshold` for `confirm_events`
consecutive events, or at once when its probability reaches `instant_threshold` (strong evidence
should not wait; weak evidence must repeat before anyone is notified). "Browsing" is never
committed to: a shopper who wanders off keeps their intent until another one clearly takes over,
so a stray event or a quiet spell raises no alarm.
The same code scores the model in training and decides in the stream.

>>> detector = ShiftDetector(DetectorConfig(0.6, 2, instant_threshold=0.95), browsing=0)
>>> state = DetectorState()
>>> for p in ([0.1, 0.8, 0.1], [0.1, 0.7, 0.2], [0.0, 0.02, 0.98]):
...     print(detector.update(state, p))
None
Shift(from_intent=None, to_intent=1, from_confidence=0.0, to_confidence=0.7)
Shift(from_intent=1, to_intent=2, from_confidence=0.02, to_confidence=0.98)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    enter_threshold: float = 0.7
    confirm_events: int = 2
    instant_threshold: float = 0.9
    mode: str = "distribution"  # or "lift"
    lift_threshold: float = 3.0
    baseline_rate: float = 0.01
    # lift mode: an average below this is read as this, so a first-ever intent's lift stays finite
    baseline_floor: float = 0.01

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "enter_threshold": self.enter_threshold,
            "confirm_events": self.confirm_events,
            "instant_threshold": self.instant_threshold,
        }
        if self.mode != "distribution":
            raw |= {
                "mode": self.mode,
                "lift_threshold": self.lift_threshold,
                "baseline_rate": self.baseline_rate,
                "baseline_floor": self.baseline_floor,
            }
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DetectorConfig:
        default = cls()
        mode = raw.get("mode", default.mode)
        if mode not in ("distribution", "lift"):
            raise ValueError(f"detector mode {mode!r}: expected 'distribution' or 'lift'")
        return cls(
            float(raw["enter_threshold"]),
            int(raw["confirm_events"]),
            float(raw["instant_threshold"]),
            mode,
            float(raw.get("lift_threshold", default.lift_threshold)),
            float(raw.get("baseline_rate", default.baseline_rate)),
            float(raw.get("baseline_floor", default.baseline_floor)),
        )


@dataclass(slots=True)
class DetectorState:
    current: int | None = None  # the committed intent's index
    candidate: int | None = None  # the intent gathering confirmation
    streak: int = 0
    baseline: list[float] | None = None  # lift mode: the window's average probability per intent

    def to_list(self) -> list[Any]:
        if self.baseline is None:
            return [self.current, self.candidate, self.streak]
        # rounded: it is stored with every window, and four digits move no decision
        return [self.current, self.candidate, self.streak, [round(value, 4) for value in self.baseline]]

    @classmethod
    def from_list(cls, raw: Sequence[Any]) -> DetectorState:
        current, candidate, streak, *rest = raw
        return cls(current, candidate, int(streak or 0), list(rest[0]) if rest else None)


@dataclass(frozen=True, slots=True)
class Shift:
    from_intent: int | None  # None: the first intent this window commits to
    to_intent: int
    from_confidence: float  # the old intent's probability now
    to_confidence: float


class ShiftDetector:
    def __init__(self, config: DetectorConfig, browsing: int) -> None:
        self.config = config
        self.browsing = browsing

    def update(self, state: DetectorState, probabilities: Sequence[float]) -> Shift | None:
        """Feed one event's intent distribution; returns the shift it completes, if any."""
        if self.config.mode == "lift":
            best, best_probability, strong = self._best_lift(state, probabilities)
        else:
            best, best_probability = self._best_actionable(probabilities)
            strong = best_probability >= self.config.enter_threshold
        if best == state.current or not strong:
            state.candidate, state.streak = None, 0
            return None
        state.streak = state.streak + 1 if best == state.candidate else 1
        state.candidate = best
        confirmed = state.streak >= self.config.confirm_events
        if not confirmed and best_probability < self.config.instant_threshold:
            return None
        shift = Shift(
            from_intent=state.current,
            to_intent=best,
            from_confidence=0.0 if state.current is None else round(float(probabilities[state.current]), 4),
            to_confidence=round(best_probability, 4),
        )
        state.current, state.candidate, state.streak = best, None, 0
        return shift

    def run(self, distributions: Iterable[Sequence[float]]) -> list[tuple[int, Shift]]:
        """Every shift over a sequence of distributions, with the index of the event that made it."""
        if self.config.mode == "lift":
            return self._run_lift(np.asarray(list(distributions), dtype=np.float64))
        state = DetectorState()
        shifts = []
        for position, probabilities in enumerate(distributions):
            shift = self.update(state, probabilities)
            if shift is not None:
                shifts.append((position, shift))
        return shifts

    def _run_lift(self, values: np.ndarray) -> list[tuple[int, Shift]]:
        """`run` in lift mode, as `update` event by event would decide, but with the averages and
        lifts computed for the whole sequence at once: training tunes the detector over a year of
        a retailer's events, setting by setting."""
        config = self.config
        if len(values) == 0:
            return []
        baseline = _moving_average(values, config.baseline_rate)
        lift = np.full_like(values, -1.0)
        lift[1:] = values[1:] / np.maximum(baseline[:-1], config.baseline_floor)
        lift[:, self.browsing] = -1.0
        lift[values < config.enter_threshold] = -1.0
        best = lift.argmax(axis=1)
        rows = np.arange(len(values))
        strong = np.nonzero(lift[rows, best] >= config.lift_threshold)[0]
        shifts = []
        current: int | None = None
        candidate: int | None = None
        streak = 0
        previous = -2
        for position in strong.tolist():
            if position != previous + 1:  # an event in between was no candidate: it reset the streak
                candidate, streak = None, 0
            previous = position
            intent = int(best[position])
            if intent == current:
                candidate, streak = None, 0
                continue
            streak = streak + 1 if intent == candidate else 1
            candidate = intent
            probability = float(values[position, intent])
            if streak < config.confirm_events and probability < config.instant_threshold:
                continue
            from_confidence = 0.0 if current is None else round(float(values[position, current]), 4)
            shifts.append((position, Shift(current, intent, from_confidence, round(probability, 4))))
            current, candidate, streak = intent, None, 0
        return shifts

    def _best_lift(self, state: DetectorState, probabilities: Sequence[float]) -> tuple[int, float, bool]:
        """The actionable intent of highest lift over the window's own average, and whether it is
        strong enough to be a candidate; then the average takes this event in."""
        values = np.asarray(probabilities, dtype=np.float64)
        config = self.config
        if state.baseline is None:
            state.baseline = values.tolist()  # a new window: nothing is news until it has a history
            return self.browsing, 0.0, False
        baseline = np.asarray(state.baseline, dtype=np.float64)
        lift = values / np.maximum(baseline, config.baseline_floor)
        lift[self.browsing] = -1.0
        lift[values < config.enter_threshold] = -1.0
        best = int(lift.argmax())
        state.baseline = ((1 - config.baseline_rate) * baseline + config.baseline_rate * values).tolist()
        return best, float(values[best]), bool(lift[best] >= config.lift_threshold)

    def _best_actionable(self, probabilities: Sequence[float]) -> tuple[int, float]:
        values = np.asarray(probabilities, dtype=np.float64)
        masked = values.copy()
        masked[self.browsing] = -1.0
        best = int(masked.argmax())
        return best, float(values[best])


_AVERAGE_CHUNK = 128  # (1 - rate) ** -128 stays far from float64's limits for any rate up to 0.2


def _moving_average(values: np.ndarray, rate: float) -> np.ndarray:
    """The exponential average `update` keeps, after every event: the first event as it is, then
    (1 - rate) x previous + rate x event. Computed a chunk of events at a time in closed form,
    b[s + k] = keep ** (k + 1) x b[s - 1] + rate x keep ** k x sum_j keep ** -j x v[s + j]."""
    keep = 1.0 - rate
    average = np.empty_like(values)
    average[0] = values[0]
    powers = keep ** np.arange(_AVERAGE_CHUNK + 1, dtype=np.float64)
    for start in range(1, len(values), _AVERAGE_CHUNK):
        chunk = values[start : start + _AVERAGE_CHUNK]
        length = len(chunk)
        weighted = np.cumsum(chunk / powers[:length, None], axis=0) * powers[:length, None]
        average[start : start + length] = powers[1 : length + 1, None] * average[start - 1] + rate * weighted
    return average
