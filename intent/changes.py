"""IntentChanged: the event the stream emits when a shopper's intent shifts.

Its id is a hash of what caused it (the window, the triggering event, the shift, the model), so
re-processing the same input after a crash yields the same id and subscribers can de-duplicate.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from intent.detector import Shift
from intent.events import ShopperEvent, iso_time
from intent.model import IntentModel
from intent.window import EVIDENCE_EVENTS

TOP_INTENTS = 3
_EVIDENCE_FIELDS = {"e": "event", "pn": "name", "p": "product_id", "c": "category", "qy": "query", "pr": "price"}


def intent_changed_id(scope: str, window_key: str, message_id: str, shift: Shift, model_version: str) -> str:
    cause = f"{scope}|{window_key}|{message_id}|{shift.from_intent}|{shift.to_intent}|{model_version}"
    return "ic_" + hashlib.sha256(cause.encode()).hexdigest()[:32]


def build_intent_changed(
    *,
    model: IntentModel,
    shift: Shift,
    probabilities: np.ndarray,
    event: ShopperEvent,
    scope: str,
    window_key: str,
    window_events: Sequence[dict[str, Any]],
    segment: str | None,
    personalization_allowed: bool | None,
    detected_at: float | None = None,
) -> dict[str, Any]:
    """`personalization_allowed` is the shopper's latest explicit choice: the event's, or when the
    event says nothing, the one its window remembers (None: never stated)."""
    intents = model.intents

    def may_tell(index: int) -> bool:
        # a sensitive intent is named only with consent, as `intent.policy.may_show` rules for the
        # committed intent: also when it is the intent left behind, or a runner-up
        return personalization_allowed is True or not intents[index].sensitive

    top = [i for i in np.argsort(-probabilities) if may_tell(int(i))][:TOP_INTENTS]
    new = intents[shift.to_intent]
    return {
        "id": intent_changed_id(scope, window_key, event.message_id, shift, model.version),
        "type": "intent.changed",
        "scope": scope,  # "shopper": a known shopper across sessions; "session": one visit
        "shopper_id": event.shopper_id,
        "user_id": event.user_id,
        "anonymous_id": event.anonymous_id,
        "session_id": event.session_id,
        "from_intent": None
        if shift.from_intent is None or not may_tell(shift.from_intent)
        else {
            "id": intents[shift.from_intent].id,
            "label": intents[shift.from_intent].label,
            "confidence": shift.from_confidence,
        },
        "to_intent": {
            "id": new.id,
            "label": new.label,
            "confidence": shift.to_confidence,
            "sensitive": new.sensitive,
        },
        "top_intents": [
            {"id": intents[i].id, "label": intents[i].label, "probability": round(float(probabilities[i]), 4)}
            for i in top
        ],
        "evidence": [
            {
                "message_id": record["m"],
                "timestamp": iso_time(record["t"]),
                **{long: record[short] for short, long in _EVIDENCE_FIELDS.items() if short in record},
            }
            for record in window_events[-EVIDENCE_EVENTS:]
        ],
        "segment": segment,
        "personalization_allowed": personalization_allowed,
        "model_version": model.version,
        "event_time": iso_time(event.timestamp),
        "detected_at": iso_time(time.time() if detected_at is None else detected_at),
        "trigger_message_id": event.message_id,
    }
