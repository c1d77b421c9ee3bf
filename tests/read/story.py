"""The coffee -> tea -> cold story told through the stream's own tracker, as the read side's state."""

from __future__ import annotations

from typing import Any

import orjson

from intent.events import event_from_dict
from intent.model import IntentModel
from intent.policy import DeliveryPolicy, webhook_payload
from intent.read.answers import ShopperReader
from intent.read.latest import LatestChanges
from intent.simulate import Simulator, coffee_tea_cold_story
from intent.stores import DictStore
from intent.suggest import Suggester
from intent.tracking import IntentTracker
from intent.window import WindowPolicy

STORY = "story-coffee-tea-cold"
POLICY = WindowPolicy()


def holdout_policy(share: float) -> DeliveryPolicy:
    return DeliveryPolicy(share, "salt", 3, 86400, 1000)


def told(
    model: IntentModel,
    suggester: Suggester,
    calls: list[dict[str, Any]],
    holdout_share: float = 0.0,
) -> tuple[ShopperReader, list[dict[str, Any]]]:
    """The calls through the stream's tracker, every change enriched as the worker does and recorded
    as the delivery agent records it; the reader over that state, and the changes emitted."""
    delivery = holdout_policy(holdout_share)

    def enrich(change: dict[str, Any], window: list[dict[str, Any]], scores: Any) -> dict[str, Any]:
        holdout = delivery.in_holdout(change["shopper_id"])
        suggestions = [] if holdout else suggester.suggest(change["to_intent"]["id"], window, window[-1]["t"], scores)
        return webhook_payload(change, suggestions, holdout)

    sessions, shoppers = DictStore(), DictStore()
    tracker = IntentTracker(model, POLICY, sessions, shoppers, enrich_change=enrich)
    latest = LatestChanges(DictStore())
    changes = []
    for offset, call in enumerate(calls):  # one event a batch: the stored window carries the state on
        for change in tracker.process([event_from_dict(call)], [(0, offset)]):
            latest.record(orjson.loads(orjson.dumps(change)), 0)  # as read back from the topic
            changes.append(change)
        tracker.save()
    reader = ShopperReader(lambda: model, sessions, shoppers, latest, delivery.in_holdout, POLICY.session_idle_seconds)
    return reader, changes


def story_calls(consent: bool | None | str = "as told") -> list[dict[str, Any]]:
    """The coffee -> tea -> cold story; its events all allow personalization as told, else each says
    `consent` (None: nothing about it)."""
    calls = coffee_tea_cold_story(Simulator(seed=0).world).events
    if consent != "as told":
        for call in calls:
            del call["context"]["consent"]
            if consent is not None:
                call["context"]["consent"] = {"categoryPreferences": {"Personalization": consent}}
    return calls
