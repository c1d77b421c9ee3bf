"""A shopper's intent and timeline, built from the state this worker holds for her.

The windows are the stream's (`intent.window`): a known shopper's (`userId`) shopper window, else the
anonymous visitor's latest session window. The model's intents after each of the window's events are
recomputed on request by the runtime's own featurization and ONNX sequence model
(`intent.features` through `IntentModel.featurizer`, `IntentModel.sequence_probabilities`), from
the window's stored events: the stream keeps only its recurrent state after the last event, not the
distribution. Where the stream's state also carries events older than the window (a shopper window
holds her last 200 events of the last 7 days, by default), the recomputed reading may differ from
the stream's slightly. The committed intent is the shift detector's state in the window.

Consent, sensitivity and the holdout apply as they do to webhooks (`intent.policy.may_show`,
`DeliveryPolicy.in_holdout`): with her latest explicit choice (the window's), a shopper who refused
personalization shows no intent at all, and a sensitive intent shows only with her consent: not among
the current intents, not as the committed intent (then null), not as a change (a change is shown
only if both her choice now and her choice when it was detected allow it; a hidden `from_intent`
becomes null). A shopper in the holdout is marked so and her changes carry no suggestions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from intent.detector import DetectorState
from intent.events import iso_time
from intent.model import IntentInfo, IntentModel
from intent.policy import may_show
from intent.read.latest import LatestChanges
from intent.stores import KeyValueStore
from intent.window import Window, expand

CURRENT_INTENTS = 5  # in the intent answer
TIMELINE_INTENTS = 3  # after each event of the timeline
_HIDDEN = IntentInfo("", "", sensitive=True)  # an intent id the model does not know: shown to nobody


@dataclass(frozen=True)
class ShopperState:
    """What this worker holds for one shopper."""

    known: bool  # a shopper window exists (a `userId`)
    window: Window | None  # the one the model reads: the shopper window, else the latest session's
    changes: list[dict[str, Any]]  # her last intent changes, oldest first

    @property
    def consent(self) -> bool | None:
        """Her latest explicit personalization choice, as the window remembers it."""
        if self.window is not None:
            return self.window.personalization_allowed
        return self.changes[-1].get("personalization_allowed") if self.changes else None


class ShopperReader:
    def __init__(
        self,
        model: Callable[[], IntentModel],
        sessions: KeyValueStore,
        shoppers: KeyValueStore,
        latest_changes: LatestChanges,
        in_holdout: Callable[[str], bool],
        session_idle_seconds: float,
    ) -> None:
        """`model()` is the model served now (a new version may be activated while serving)."""
        self.model = model
        self.sessions = sessions
        self.shoppers = shoppers
        self.latest_changes = latest_changes
        self.in_holdout = in_holdout
        self.session_idle_seconds = session_idle_seconds

    def state(self, shopper_id: str) -> ShopperState | None:
        """Her windows and changes on this worker; None when it holds nothing of her."""
        changes = self.latest_changes.changes(shopper_id)
        raw = self.shoppers.get(shopper_id)
        if raw is not None:
            return ShopperState(True, Window.from_bytes(raw), changes)
        session = self._latest_session(shopper_id)
        if session is None and not changes:
            return None
        return ShopperState(False, session, changes)

    def intent(self, shopper_id: str, served_by: str) -> dict[str, Any] | None:
        """The answer of `GET /v1/shoppers/{shopper_id}/intent`, or None for a shopper unknown here."""
        state = self.state(shopper_id)
        if state is None:
            return None
        model = self.model()
        intents = model.intents
        consent = state.consent
        holdout = self.in_holdout(shopper_id)
        window = state.window
        records = window.records() if window is not None else []
        probabilities = _probabilities(model, records)
        current = _top_shown(intents, probabilities[-1], CURRENT_INTENTS, consent) if records else []
        changes = _shown_changes(state.changes, intents, consent, holdout)
        committed = None
        if window is not None:
            index = DetectorState.from_list(window.detector).current
            if index is not None and may_show(intents[index].sensitive, consent):
                committed = self._committed(intents[index], state.changes, probabilities, index)
        session_window = shopper_window = None
        if window is not None and state.known:
            shopper_window = _size(len(records), window.last_event_time)
            session_window = _size(self._visit_events(records), window.last_event_time)
        elif window is not None:
            session_window = _size(len(records), window.last_event_time)
        return {
            "shopper_id": shopper_id,
            "known": state.known,
            "holdout": holdout,
            "committed_intent": committed,
            "current": current,
            "session_window": session_window,
            "shopper_window": shopper_window,
            "last_change": changes[-1] if changes else None,
            "model_version": model.version,
            "served_by": served_by,
        }

    def timeline(self, shopper_id: str) -> dict[str, Any] | None:
        """The answer of `GET /v1/shoppers/{shopper_id}/timeline`, or None for a shopper unknown here.

        The intents after each event are recomputed from the window's events (see the module's
        docstring), so the chart is the model's reading of the window as it is stored now."""
        state = self.state(shopper_id)
        if state is None:
            return None
        model = self.model()
        consent = state.consent
        holdout = self.in_holdout(shopper_id)
        records = state.window.records() if state.window is not None else []
        probabilities = _probabilities(model, records)
        events = []
        for record, after in zip(records, probabilities, strict=True):
            event: dict[str, Any] = {
                "t": iso_time(record["t"]),
                "event": record["e"],
                "product_id": record.get("p"),
                "category": record.get("c"),
            }
            for short, name in (("pn", "product_name"), ("pr", "price"), ("qy", "query")):
                if short in record:
                    event[name] = record[short]
            event["top_intents"] = _top_shown(model.intents, after, TIMELINE_INTENTS, consent)
            events.append(event)
        return {
            "shopper_id": shopper_id,
            "events": events,
            "changes": _shown_changes(state.changes, model.intents, consent, holdout),
            "holdout": holdout,
        }

    def _latest_session(self, shopper_id: str) -> Window | None:
        """The anonymous visitor's most recent session window. A visit without `sessionId` is found by
        its key (`<shopper>|-`); visits named by `context.sessionId` are found by a scan of this
        worker's session windows, which costs a little per session window it holds."""
        raw = self.sessions.get(f"{shopper_id}|-")
        if raw is not None:
            return Window.from_bytes(raw)
        prefix = f"{shopper_id}|"
        latest: Window | None = None
        for key, raw in self.sessions.items():
            if key.startswith(prefix):
                window = Window.from_bytes(raw)
                # `a|b|c` may be shopper `a|b`'s visit `c`: only `<shopper>|<its sessionId>` is hers
                if key == f"{prefix}{window.session_id}" and (
                    latest is None or window.last_event_time > latest.last_event_time
                ):
                    latest = window
        return latest

    def _visit_events(self, records: Sequence[dict[str, Any]]) -> int:
        """A known shopper's events of her current visit: her session window keeps only the visit's
        clock (the events are in her shopper window), so the visit is counted back from her last
        event to the first gap longer than a visit's idle time."""
        count = 0
        later: float | None = None
        for record in reversed(records):
            if later is not None and later - record["t"] > self.session_idle_seconds:
                break
            count += 1
            later = record["t"]
        return count

    @staticmethod
    def _committed(
        intent: IntentInfo, changes: list[dict[str, Any]], probabilities: np.ndarray, index: int
    ) -> dict[str, Any]:
        """The committed intent with the confidence its IntentChanged said, or, when that change is
        not kept (its record is not read yet, or the window was re-encoded by a new model version),
        the model's probability of it now."""
        said = next((c["to_intent"] for c in reversed(changes) if c["to_intent"]["id"] == intent.id), None)
        if said is not None:
            confidence = said["confidence"]
        else:
            confidence = round(float(probabilities[-1][index]), 4) if len(probabilities) else None
        return {"id": intent.id, "label": intent.label, "confidence": confidence}


def _probabilities(model: IntentModel, records: Sequence[dict[str, Any]]) -> np.ndarray:
    """The model's intents after each event of the window, shape (events, intents)."""
    if not records:
        return np.zeros((0, len(model.intents)), dtype=np.float32)
    features = model.featurizer.encode_sequence([expand(record) for record in records])
    return model.sequence_probabilities(features[None, :, :])[0]


def _top_shown(
    intents: Sequence[IntentInfo], probabilities: np.ndarray, count: int, consent: bool | None
) -> list[dict[str, Any]]:
    """The `count` most likely intents that may be shown, most likely first."""
    top = []
    for index in np.argsort(-probabilities, kind="stable"):
        intent = intents[index]
        if may_show(intent.sensitive, consent):
            top.append({"id": intent.id, "label": intent.label, "probability": round(float(probabilities[index]), 4)})
            if len(top) == count:
                break
    return top


def _shown_changes(
    changes: list[dict[str, Any]], intents: Sequence[IntentInfo], consent: bool | None, holdout: bool
) -> list[dict[str, Any]]:
    """The changes that may be shown, oldest first, as the read answers carry them."""
    by_id = {intent.id: intent for intent in intents}

    def shown(intent: dict[str, Any] | None, consent_then: bool | None) -> bool:
        sensitive = by_id.get(intent["id"], _HIDDEN).sensitive if intent is not None else False
        return may_show(sensitive, consent) and may_show(sensitive, consent_then)

    answers = []
    for change in changes:
        consent_then = change.get("personalization_allowed")
        if not shown(change["to_intent"], consent_then):
            continue
        answers.append(
            {
                "id": change["id"],
                "detected_at": change["detected_at"],
                "event_time": change["event_time"],
                "from_intent": change["from_intent"] if shown(change["from_intent"], consent_then) else None,
                "to_intent": change["to_intent"],
                "evidence": change["evidence"],
                "suggestions": [] if holdout else change["suggestions"],
            }
        )
    return answers


def _size(events: int, last_event_time: float) -> dict[str, Any]:
    return {"events": events, "last_event_at": iso_time(last_event_time)}
