"""The stream's per-event work, without Kafka: windows, micro-batches, replays, expiry, new models."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest

from intent.events import ShopperEvent, event_from_dict, iso_time
from intent.model import IntentModel
from intent.settings import REPO_DIR
from intent.simulate import Simulator, coffee_tea_cold_story, parse_shopper
from intent.stores import DictStore
from intent.tracking import IntentTracker
from intent.window import Window, WindowPolicy, session_key

SHIPPED = REPO_DIR / "models" / "intent-gru"


@pytest.fixture(scope="module")
def model() -> IntentModel:
    return IntentModel.load(SHIPPED)


@pytest.fixture(scope="module")
def simulator() -> Simulator:
    return Simulator(seed=21)


@pytest.fixture(scope="module")
def mixed_stream(simulator: Simulator) -> list[ShopperEvent]:
    """Several shoppers' events interleaved by time, as they reach a topic, with the story."""
    shoppers = [coffee_tea_cold_story(simulator.world), *simulator.shoppers(12)]
    events = [event for shopper in shoppers for event in parse_shopper(shopper)]
    return sorted(events, key=lambda event: event.timestamp)


class FrozenClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tracker_for(model: IntentModel, clock: FrozenClock | None = None, **policy: float) -> IntentTracker:
    return IntentTracker(
        model,
        WindowPolicy(**policy),
        DictStore(),
        DictStore(),
        clock=clock or FrozenClock(2_000_000_000.0),
    )


def run(tracker: IntentTracker, events: list[ShopperEvent], batch: int, first_offset: int = 0) -> list[dict]:
    """Feed `events` as if read from partition 0 of a topic from `first_offset` on."""
    changes = []
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        offset = first_offset + start
        changes += tracker.process(chunk, [(0, offset + i) for i in range(len(chunk))])
        tracker.save()
    return changes


def comparable(change: dict) -> tuple:
    return (change["id"], change["to_intent"]["id"], round(change["to_intent"]["confidence"], 4))


def test_micro_batches_detect_exactly_what_event_by_event_processing_detects(
    model: IntentModel, mixed_stream: list[ShopperEvent]
) -> None:
    one_by_one = run(tracker_for(model), mixed_stream, batch=1)
    batched_tracker = tracker_for(model)
    batched = run(batched_tracker, mixed_stream, batch=200)
    assert one_by_one, "the stream holds shifts to detect"
    assert sorted(map(comparable, batched)) == sorted(map(comparable, one_by_one))
    for shopper in {c["shopper_id"] for c in one_by_one}:  # each shopper's changes stay in order
        assert [c["id"] for c in batched if c["shopper_id"] == shopper] == [
            c["id"] for c in one_by_one if c["shopper_id"] == shopper
        ]
    # and the batch really was served by few model calls: one per round, not one per event
    assert batched_tracker.stats.model_calls < len(mixed_stream) / 2


def test_the_story_shifts_the_known_shopper_from_coffee_to_cold_and_flu_care(
    model: IntentModel, simulator: Simulator
) -> None:
    story = parse_shopper(coffee_tea_cold_story(simulator.world))
    changes = run(tracker_for(model), story, batch=1)
    journey = [(c["from_intent"] or {}).get("id") for c in changes] + [changes[-1]["to_intent"]["id"]]
    assert journey[0] is None and journey[1] == "coffee_ritual"
    assert "cold_flu_care" in journey
    cold = next(c for c in changes if c["to_intent"]["id"] == "cold_flu_care")
    assert cold["scope"] == "shopper"
    assert cold["shopper_id"] == story[0].user_id
    assert cold["evidence"][-1]["message_id"] == cold["trigger_message_id"]


def test_the_same_input_gives_the_same_intent_changed_ids(model: IntentModel, mixed_stream: list[ShopperEvent]) -> None:
    first = run(tracker_for(model), mixed_stream, batch=50)
    second = run(tracker_for(model), mixed_stream, batch=50)
    assert [c["id"] for c in first] == [c["id"] for c in second]
    assert len({c["id"] for c in first}) == len(first)


def test_replayed_offsets_are_skipped_and_change_nothing(model: IntentModel, mixed_stream: list[ShopperEvent]) -> None:
    tracker = tracker_for(model)
    head = mixed_stream[:300]
    run(tracker, head, batch=100)
    before = dict(tracker.sessions.data), dict(tracker.shoppers.data)
    again = run(tracker, head, batch=100)  # at-least-once: a restarted worker reads them again
    assert again == []
    assert tracker.stats.replayed_events == len(head)
    assert (tracker.sessions.data, tracker.shoppers.data) == before


def test_nothing_is_stored_until_save(model: IntentModel, mixed_stream: list[ShopperEvent]) -> None:
    tracker = tracker_for(model)
    tracker.process(mixed_stream[:20], [(0, i) for i in range(20)])
    assert tracker.sessions.data == {} and tracker.shoppers.data == {}
    tracker.save()
    assert tracker.sessions.data


def event(shopper: str, at: float, known: bool = True, category: str = "Coffee Beans", **extra: object) -> ShopperEvent:
    body = {
        "event": "Product Viewed",
        "messageId": f"{shopper}-{at}",
        "userId" if known else "anonymousId": shopper,
        "timestamp": iso_time(at),
        "properties": {"category": category, "price": 9.5},
        **extra,
    }
    return event_from_dict(orjson.loads(orjson.dumps(body)))


def test_a_session_keeps_only_its_last_events_and_a_shopper_only_the_recent_days(
    model: IntentModel,
) -> None:
    tracker = tracker_for(model, session_events=5, shopper_events=8, shopper_days=2.0)
    start = 1_767_600_000.0
    anonymous = [event("anon", start + i * 60, known=False, context={"sessionId": "v"}) for i in range(7)]
    known = [event("ada", start + i * 60, context={"sessionId": "s1"}) for i in range(12)]
    known += [event("ada", start + 3 * 86400 + i, context={"sessionId": "s2"}) for i in range(3)]
    run(tracker, anonymous + known, batch=4)
    session = Window.from_bytes(tracker.sessions.data["anon|v"])
    assert [record["m"] for record in session.records()] == [e.message_id for e in anonymous[2:]]
    shopper = Window.from_bytes(tracker.shoppers.data["ada"])
    # three days later, the 2-day span keeps only the second visit
    assert [record["m"] for record in shopper.records()] == [e.message_id for e in known[12:]]
    # the known shopper's visit keeps its clock; its events are in the shopper window only
    visit = Window.from_bytes(tracker.sessions.data["ada|s2"])
    assert visit.lines == [] and visit.last_event_time == known[-1].timestamp


def test_without_a_session_id_a_long_pause_starts_a_new_session(model: IntentModel) -> None:
    tracker = tracker_for(model, session_idle_seconds=1800.0)
    start = 1_767_600_000.0
    first, soon, after_a_pause = (event("bo", start + t, known=False) for t in (0, 600, 600 + 1801))
    run(tracker, [first, soon], batch=1)
    visit = Window.from_bytes(tracker.sessions.data[session_key(first)]).session_id
    run(tracker, [after_a_pause], batch=1, first_offset=2)
    later = Window.from_bytes(tracker.sessions.data[session_key(first)])
    assert later.session_id != visit
    assert [record["m"] for record in later.records()] == [after_a_pause.message_id]


def test_idle_sessions_expire_by_the_clock_and_by_event_time(model: IntentModel) -> None:
    clock = FrozenClock(1_767_600_000.0)
    tracker = tracker_for(model, clock, session_idle_seconds=1800.0, shopper_days=1.0)
    run(tracker, [event("cy", clock.now - 10, context={"sessionId": "a"})], batch=1)
    assert tracker.expire() == (0, 0)
    clock.now += 1801
    assert tracker.expire() == (1, 0)  # the visit is over; the known shopper is kept for days
    assert tracker.sessions.data == {} and "cy" in tracker.shoppers.data

    # a replay moves event time faster than the clock: a day of events later, idle windows go too
    run(tracker, [event("dee", clock.now + 86400 + 5, context={"sessionId": "b"})], batch=1, first_offset=1)
    assert tracker.expire() == (0, 1)
    assert list(tracker.shoppers.data) == ["dee"]


def test_a_new_model_version_re_encodes_the_windows_without_losing_them(
    model: IntentModel, mixed_stream: list[ShopperEvent], tmp_path: Path
) -> None:
    # windows long enough to hold every event, so re-encoding sees the whole history
    tracker = tracker_for(model, shopper_days=365.0)
    head, tail = mixed_stream[:400], mixed_stream[400:]
    run(tracker, head, batch=100)
    shopper_key = next(e.user_id for e in tail if e.user_id in tracker.shoppers.data)

    # the same weights under a new version: re-encoding must rebuild exactly the same state
    directory = tmp_path / "next"
    shutil.copytree(SHIPPED, directory)
    metadata = orjson.loads((directory / "metadata.json").read_bytes())
    metadata["model_version"] = metadata["model_version"] + "-next"
    (directory / "metadata.json").write_bytes(orjson.dumps(metadata))
    tracker.activate(IntentModel.load(directory))

    run(tracker, tail, batch=100, first_offset=len(head))
    assert tracker.stats.reencoded_windows > 0
    after = Window.from_bytes(tracker.shoppers.data[shopper_key])
    assert after.model_version == metadata["model_version"]

    never_switched = tracker_for(model, shopper_days=365.0)
    run(never_switched, mixed_stream, batch=100)
    reference = Window.from_bytes(never_switched.shoppers.data[shopper_key])
    assert [r["m"] for r in after.records()] == [r["m"] for r in reference.records()]
    assert np.allclose(after.hidden_state(), reference.hidden_state(), atol=1e-5)


def test_events_of_categories_the_model_never_saw_raise_no_intent_change(model: IntentModel) -> None:
    tracker = tracker_for(model)
    start = 1_767_600_000.0
    unknown = [event("zoe", start + 60 * i, category="shop-category-4711") for i in range(30)]
    assert run(tracker, unknown, batch=7) == []
    window = Window.from_bytes(tracker.shoppers.data["zoe"])
    assert len(window.lines) == 30 and window.hidden_state() is not None  # still tracked
