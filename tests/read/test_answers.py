"""The read answers on the real shipped model and the stream's own tracker (windows in dicts): what a
shopper's intent and timeline show, and what consent, sensitivity and the holdout hide."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from intent.events import iso_time
from intent.model import IntentModel
from intent.read.answers import ShopperReader
from intent.read.latest import LatestChanges
from intent.stores import DictStore
from intent.suggest import Suggester
from tests.read.story import STORY, story_calls, told


def sensitive_ids(model: IntentModel) -> set[str]:
    return {intent.id for intent in model.intents if intent.sensitive}


def test_a_consenting_shoppers_intent_is_the_cold_change_with_its_suggestions_and_the_models_reading_now(
    model: IntentModel, suggester: Suggester
) -> None:
    reader, emitted = told(model, suggester, story_calls())
    answer = reader.intent(STORY, served_by="http://worker-a:6066")
    assert answer is not None
    cold = next(change for change in emitted if change["to_intent"]["id"] == "cold_flu_care")
    assert answer["known"] is True and answer["holdout"] is False
    assert answer["committed_intent"] == {
        "id": "cold_flu_care",
        "label": "Cold & flu care",
        "confidence": cold["to_intent"]["confidence"],
    }
    assert answer["current"][0]["id"] == "cold_flu_care" and len(answer["current"]) == 5
    probabilities = [intent["probability"] for intent in answer["current"]]
    assert probabilities == sorted(probabilities, reverse=True)
    last = answer["last_change"]
    assert last["id"] == cold["id"] and last["from_intent"]["id"] == "coffee_ritual"
    assert last["evidence"] == cold["evidence"] and last["evidence"][-1]["category"] == "mint tea"
    assert last["suggestions"] == cold["suggestions"] and last["suggestions"][0]["product_id"] == "P0034"
    assert set(last) == {"id", "detected_at", "event_time", "from_intent", "to_intent", "evidence", "suggestions"}
    # the shopper window keeps the last 7 days of her events: the visits of Jan 26, 28 and 29
    kept = [call for call in story_calls() if call["timestamp"] >= "2026-01-22"]
    last_visit = [call for call in kept if call["context"]["sessionId"] == kept[-1]["context"]["sessionId"]]
    assert answer["shopper_window"] == {"events": len(kept), "last_event_at": kept[-1]["timestamp"]}
    assert answer["session_window"] == {"events": len(last_visit), "last_event_at": kept[-1]["timestamp"]}
    assert answer["model_version"] == model.version and answer["served_by"] == "http://worker-a:6066"


def test_the_timeline_has_the_windows_events_in_order_with_the_models_reading_after_each_and_the_changes(
    model: IntentModel, suggester: Suggester
) -> None:
    reader, emitted = told(model, suggester, story_calls())
    timeline = reader.timeline(STORY)
    assert timeline is not None
    kept = [call for call in story_calls() if call["timestamp"] >= "2026-01-22"]
    assert [event["t"] for event in timeline["events"]] == [call["timestamp"] for call in kept]
    assert [event["event"] for event in timeline["events"]] == [call["event"] for call in kept]
    first_tea = next(event for event in timeline["events"] if event["category"] == "herbal tea")
    assert first_tea["product_name"] and first_tea["price"] > 0 and first_tea["product_id"].startswith("P")
    search = timeline["events"][0]
    assert search["event"] == "Products Searched" and search["query"] == "coffee beans" and "price" not in search
    assert all(len(event["top_intents"]) == 3 for event in timeline["events"])
    # the model, run again over the window, reads the story as the stream did when it told the changes
    cold = next(change for change in emitted if change["to_intent"]["id"] == "cold_flu_care")
    at_cold = next(event for event in timeline["events"] if event["t"] == cold["event_time"])
    assert at_cold["top_intents"][0]["id"] == "cold_flu_care"
    assert timeline["events"][0]["top_intents"][0]["id"] == "coffee_ritual"
    assert [change["id"] for change in timeline["changes"]] == [change["id"] for change in emitted]
    assert timeline["holdout"] is False


def test_without_a_stated_consent_no_sensitive_intent_is_shown_anywhere(
    model: IntentModel, suggester: Suggester
) -> None:
    reader, emitted = told(model, suggester, story_calls(consent=None))
    assert {change["to_intent"]["id"] for change in emitted} >= {"coffee_ritual", "cold_flu_care"}
    answer, timeline = reader.intent(STORY, "here"), reader.timeline(STORY)
    assert answer is not None and timeline is not None
    hidden = sensitive_ids(model)
    assert answer["committed_intent"] is None  # the detector holds cold & flu, which is not to be shown
    assert answer["current"] and not {intent["id"] for intent in answer["current"]} & hidden
    assert answer["last_change"]["to_intent"]["id"] == "coffee_ritual"  # the newest change that may be shown
    assert [change["to_intent"]["id"] for change in timeline["changes"]] == ["coffee_ritual"]
    shown = {intent["id"] for event in timeline["events"] for intent in event["top_intents"]}
    assert shown and not shown & hidden
    assert "cold_flu_care" not in orjson.dumps(answer).decode() + orjson.dumps(timeline).decode()


def test_a_shopper_who_refused_personalization_shows_no_intent_at_all(model: IntentModel, suggester: Suggester) -> None:
    reader, emitted = told(model, suggester, story_calls(consent=False))
    assert emitted  # the stream detected her changes; none may be told
    answer, timeline = reader.intent(STORY, "here"), reader.timeline(STORY)
    assert answer is not None and timeline is not None
    assert (answer["committed_intent"], answer["current"], answer["last_change"]) == (None, [], None)
    assert timeline["changes"] == [] and all(event["top_intents"] == [] for event in timeline["events"])
    assert len(timeline["events"]) == answer["shopper_window"]["events"] > 0


def test_a_consent_withdrawn_later_hides_the_changes_it_allowed_then(model: IntentModel, suggester: Suggester) -> None:
    calls = story_calls()
    calls[-1]["context"]["consent"] = {"categoryPreferences": {"Personalization": False}}
    reader, emitted = told(model, suggester, calls)
    assert any(change["personalization_allowed"] for change in emitted)
    answer = reader.intent(STORY, "here")
    assert answer is not None and answer["last_change"] is None and answer["current"] == []


def test_a_holdout_shopper_is_marked_and_her_changes_carry_no_suggestions(
    model: IntentModel, suggester: Suggester
) -> None:
    reader, _ = told(model, suggester, story_calls(), holdout_share=1.0)
    answer, timeline = reader.intent(STORY, "here"), reader.timeline(STORY)
    assert answer is not None and timeline is not None
    assert answer["holdout"] is True and timeline["holdout"] is True
    assert answer["last_change"]["to_intent"]["id"] == "cold_flu_care" and answer["last_change"]["suggestions"] == []
    assert timeline["changes"] and all(change["suggestions"] == [] for change in timeline["changes"])


def test_a_hidden_intent_a_change_comes_from_is_shown_as_null(model: IntentModel) -> None:
    latest = LatestChanges(DictStore())
    intent: Callable[[str], dict[str, Any]] = lambda id: {"id": id, "label": id, "confidence": 0.9}  # noqa: E731
    for number, (before, after) in enumerate([("coffee_ritual", "cold_flu_care"), ("cold_flu_care", "tea_comfort")]):
        moment = iso_time(1_800_000_000 + number)
        latest.record(
            {
                "id": f"ic_{number}",
                "shopper_id": "bo",
                "detected_at": moment,
                "event_time": moment,
                "from_intent": intent(before),
                "to_intent": intent(after),
                "evidence": [],
                "suggestions": [{"product_id": "P0001"}],
                "holdout": False,
                "personalization_allowed": None,
            },
            1,
        )
    reader = ShopperReader(lambda: model, DictStore(), DictStore(), latest, lambda _: False, 1800)
    answer = reader.intent("bo", "here")
    assert answer is not None and answer["known"] is False and answer["session_window"] is None
    assert answer["last_change"]["from_intent"] is None and answer["last_change"]["to_intent"]["id"] == "tea_comfort"
    assert [change["id"] for change in reader.timeline("bo")["changes"]] == ["ic_1"]


def test_an_anonymous_visitor_is_read_from_her_latest_visit_and_an_unknown_shopper_is_none(
    model: IntentModel, suggester: Suggester
) -> None:
    calls = []
    for visit, (start, category) in enumerate([("2026-03-01T10:00", "coffee beans"), ("2026-03-02T10:00", "mint tea")]):
        for number in range(3 + visit):
            calls.append(
                {
                    "event": "Product Viewed",
                    "anonymousId": "anon-7",
                    "messageId": f"anon-7-{visit}-{number}",
                    "timestamp": f"{start}:{10 * number:02d}Z",
                    "properties": {"category": category, "product_id": f"P00{visit}{number}"},
                    "context": {"sessionId": f"visit-{visit}"},
                }
            )
    reader, _ = told(model, suggester, calls)
    answer, timeline = reader.intent("anon-7", "here"), reader.timeline("anon-7")
    assert answer is not None and timeline is not None
    assert answer["known"] is False and answer["shopper_window"] is None
    assert answer["session_window"] == {"events": 4, "last_event_at": "2026-03-02T10:00:30.000Z"}
    assert [event["category"] for event in timeline["events"]] == ["mint tea"] * 4
    assert reader.intent("anon-8", "here") is None and reader.timeline("anon-8") is None
    assert reader.intent("anon", "here") is None  # a prefix of a visitor's key is nobody
