"""IntentChanged names a sensitive intent only with the shopper's consent: not as the intent left
behind, nor among the runners-up (a webhook of a shift *away* from cold & flu tells it too)."""

from __future__ import annotations

import numpy as np
import pytest

from intent.changes import build_intent_changed
from intent.detector import Shift
from intent.events import event_from_dict
from intent.model import IntentModel
from intent.settings import Settings


@pytest.fixture(scope="module")
def model() -> IntentModel:
    return IntentModel.load(Settings().model_dir)


def change_away_from_cold_flu(model: IntentModel, consent: bool | None) -> dict:
    ids = [intent.id for intent in model.intents]
    cold, allergy, coffee = ids.index("cold_flu_care"), ids.index("allergy_relief"), ids.index("coffee_ritual")
    probabilities = np.full(len(ids), 0.01, dtype=np.float32)
    probabilities[[coffee, cold, allergy]] = [0.6, 0.2, 0.1]
    event = event_from_dict(
        {"event": "Product Viewed", "userId": "u1", "timestamp": "2026-01-01T10:00:00Z", "messageId": "m1"}
    )
    return build_intent_changed(
        model=model,
        shift=Shift(from_intent=cold, to_intent=coffee, from_confidence=0.2, to_confidence=0.6),
        probabilities=probabilities,
        event=event,
        scope="shopper",
        window_key="u1",
        window_events=[],
        segment=None,
        personalization_allowed=consent,
        detected_at=0.0,
    )


@pytest.mark.parametrize("consent", [None, False])
def test_without_consent_a_change_names_no_sensitive_intent(model: IntentModel, consent: bool | None) -> None:
    change = change_away_from_cold_flu(model, consent)

    assert change["from_intent"] is None
    assert change["to_intent"]["id"] == "coffee_ritual"
    named = [intent["id"] for intent in change["top_intents"]]
    assert "cold_flu_care" not in named and "allergy_relief" not in named
    assert named[0] == "coffee_ritual" and len(named) == 3


def test_with_consent_the_change_names_the_sensitive_intent_it_leaves(model: IntentModel) -> None:
    change = change_away_from_cold_flu(model, True)

    assert change["from_intent"]["id"] == "cold_flu_care"
    assert [intent["id"] for intent in change["top_intents"]] == ["coffee_ritual", "cold_flu_care", "allergy_relief"]
