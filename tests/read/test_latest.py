"""The last intent changes kept per shopper for the read API (the store is a dict here)."""

from __future__ import annotations

from typing import Any

from intent.events import iso_time
from intent.read.latest import MAX_CHANGES, LatestChanges
from intent.stores import DictStore

DAY = 86400.0


def change(number: int, shopper: str = "ana", detected: float = 1_800_000_000.0) -> dict[str, Any]:
    return {
        "id": f"ic_{number}",
        "type": "intent.changed",
        "shopper_id": shopper,
        "detected_at": iso_time(detected + number),
        "event_time": iso_time(detected + number),
        "from_intent": None,
        "to_intent": {"id": "tea_comfort", "label": "Tea comfort", "confidence": 0.8, "sensitive": False},
        "top_intents": [{"id": "tea_comfort", "label": "Tea comfort", "probability": 0.8}],
        "evidence": [{"message_id": f"m{number}"}],
        "suggestions": [{"product_id": "P0001"}],
        "holdout": False,
        "personalization_allowed": True,
    }


def test_the_newest_changes_are_kept_oldest_first_and_a_change_emitted_again_replaces_itself() -> None:
    latest = LatestChanges(DictStore())
    for number in range(MAX_CHANGES + 5):
        latest.record(change(number), partition=3)
    latest.record({**change(MAX_CHANGES + 4), "suggestions": []}, partition=3)  # a redone batch's change
    kept = latest.changes("ana")
    assert [c["id"] for c in kept] == [f"ic_{n}" for n in range(5, MAX_CHANGES + 5)]
    assert kept[-1]["suggestions"] == [] and "top_intents" not in kept[-1] and "type" not in kept[-1]
    assert latest.changes("bo") == []


def test_erasing_a_shopper_removes_her_entry_only() -> None:
    store = DictStore()
    latest = LatestChanges(store)
    latest.record(change(1, "ana"), 2)
    latest.record(change(2, "bo"), 0)
    assert latest.erase("ana") == 1 and latest.erase("ana") == 0
    assert set(store.data) == {"bo"}


def test_expiry_forgets_shoppers_without_a_recent_change_then_the_least_recently_changed_past_the_bound() -> None:
    store = DictStore()
    latest = LatestChanges(store)
    now = 1_800_000_000.0
    latest.record(change(1, "old", detected=now - 8 * DAY), 0)
    for number, shopper in enumerate(["a", "b", "c"]):
        latest.record(change(number, shopper, detected=now - DAY), 1)
    assert latest.expire(now, retention_seconds=7 * DAY, max_shoppers=2) == (1, 1)
    assert set(store.data) == {"b", "c"}
