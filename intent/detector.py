"""Intent distributions -> intent shifts, with hysteresis.

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

    def to_json(self) -> dict[str, Any]:
        return {
            "enter_threshold": self.enter_threshold,
            "confirm_events": self.confirm_events,
            "instant_threshold": self.instant_threshold,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DetectorConfig:
        return cls(float(raw["enter_threshold"]), int(raw["confirm_events"]), float(raw["instant_threshold"]))


@dataclass(slots=True)
class DetectorState:
    current: int | None = None  # the committed intent's index
    candidate: int | None = None  # the intent gathering confirmation
    streak: int = 0

    def to_list(self) -> list[int | None]:
        return [self.current, self.candidate, self.streak]

    @classmethod
    def from_list(cls, raw: Sequence[int | None]) -> DetectorState:
        current, candidate, streak = raw
        return cls(current, candidate, int(streak or 0))


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
        best, best_probability = self._best_actionable(probabilities)
        if best == state.current or best_probability < self.config.enter_threshold:
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
        state = DetectorState()
        shifts = []
        for position, probabilities in enumerate(distributions):
            shift = self.update(state, probabilities)
            if shift is not None:
                shifts.append((position, shift))
        return shifts

    def _best_actionable(self, probabilities: Sequence[float]) -> tuple[int, float]:
        values = np.asarray(probabilities, dtype=np.float64)
        masked = values.copy()
        masked[self.browsing] = -1.0
        best = int(masked.argmax())
        return best, float(values[best])
