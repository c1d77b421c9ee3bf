"""The stream's per-event work, without Kafka: windows, micro-batches, replays, expiry, new models."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest

from intent.events import InvalidEvent, ShopperEvent, check_not_ahead, event_from_dict, iso_time
from intent.model import IntentModel
from intent.observability import WINDOWS_EVICTED
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


def redo_event_by_event(tracker: IntentTracker, events: list[ShopperEvent], positions: list[tuple[int, int]]) -> list:
    """What the app does when a micro-batch fails: each event alone, its windows kept until the end."""
    changes = []
    for one, position in zip(events, positions, strict=True):
        changes += tracker.process([one], [position])
        tracker.keep()
    return changes


class FailingOnce:
    """An `enrich_change` that fails the first change it sees, as a bug in a batch would."""

    def __init__(self) -> None:
        self.failed = False

    def __call__(self, change: dict, window_events: list, scores: object) -> dict:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a batch that fails")
        return change


def test_a_failed_batch_redone_event_by_event_saves_its_windows_once_and_teaches_the_crowd_each_event_once(
    model: IntentModel, mixed_stream: list[ShopperEvent]
) -> None:
    head = mixed_stream[:120]
    positions = [(0, offset) for offset in range(len(head))]
    observed: list[str] = []
    tracker = IntentTracker(
        model,
        WindowPolicy(),
        DictStore(),
        DictStore(),
        clock=FrozenClock(2_000_000_000.0),
        observe_event=lambda one, window: observed.append(one.message_id),
        enrich_change=FailingOnce(),
    )
    with pytest.raises(RuntimeError, match="a batch that fails"):
        tracker.process(head, positions)
    changes = redo_event_by_event(tracker, head, positions)
    assert tracker.sessions.data == {} and tracker.shoppers.data == {}  # not before the changes are sent
    tracker.save()

    in_one_batch = tracker_for(model)
    expected = in_one_batch.process(head, positions)
    in_one_batch.save()
    assert expected and sorted(c["id"] for c in changes) == sorted(c["id"] for c in expected)
    assert tracker.sessions.data == in_one_batch.sessions.data
    assert tracker.shoppers.data == in_one_batch.shoppers.data
    assert sorted(observed) == sorted(e.message_id for e in head)  # once each, not again on the redo


def test_a_failed_process_call_leaves_no_window_to_save(model: IntentModel, mixed_stream: list[ShopperEvent]) -> None:
    tracker = tracker_for(model)
    tracker._enrich_change = FailingOnce()
    with pytest.raises(RuntimeError):
        tracker.process(mixed_stream[:120], [(0, i) for i in range(120)])
    tracker.save()
    assert tracker.sessions.data == {} and tracker.shoppers.data == {}


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


def test_a_shoppers_window_saved_without_her_visits_gets_the_visits_clock_back_on_the_redo(
    model: IntentModel,
) -> None:
    tracker = tracker_for(model)
    visit = [event("ann", 1_999_990_000.0 + 60 * n, context={"sessionId": "v"}) for n in range(3)]
    run(tracker, visit, batch=3)
    before = dict(tracker.sessions.data)
    tracker.sessions.data.clear()  # the visit's changelog write failed, the shopper's was acknowledged

    assert run(tracker, visit, batch=3) == []  # the redo: nothing applied twice
    assert tracker.stats.replayed_events == 3
    restored, original = (Window.from_bytes(w[session_key(visit[0])]) for w in (tracker.sessions.data, before))
    assert restored.last_event_time == original.last_event_time == visit[-1].timestamp
    assert (restored.partition, restored.last_offset) == (original.partition, original.last_offset)


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
    assert visit.events == [] and visit.last_event_time == known[-1].timestamp


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
    assert after.records() == reference.records()
    assert np.allclose(after.hidden_state(), reference.hidden_state(), atol=1e-5)


def test_events_of_categories_the_model_never_saw_raise_no_intent_change(model: IntentModel) -> None:
    tracker = tracker_for(model)
    start = 1_767_600_000.0
    unknown = [event("zoe", start + 60 * i, category="shop-category-4711") for i in range(30)]
    assert run(tracker, unknown, batch=7) == []
    window = Window.from_bytes(tracker.shoppers.data["zoe"])
    assert len(window.events) == 30 and window.hidden_state() is not None  # still tracked


class TombstoneRecordingStore(DictStore):
    """A dict store that also keeps each deletion's (key, changelog partition), as the worker's
    table writes a tombstone there."""

    def __init__(self) -> None:
        super().__init__()
        self.tombstones: list[tuple[str, int]] = []

    def delete(self, key: str, partition: int) -> None:
        super().delete(key, partition)
        self.tombstones.append((key, partition))


def admit(raw: list[dict], now: float, max_ahead_seconds: float = 300.0) -> tuple[list[ShopperEvent], list[str]]:
    """The worker's parsing and validation stage: the accepted events, and each rejection's reason."""
    accepted, reasons = [], []
    for body in raw:
        try:
            parsed = event_from_dict(body)
            check_not_ahead(parsed, now, max_ahead_seconds)
        except InvalidEvent as error:
            reasons.append(error.reason)
        else:
            accepted.append(parsed)
    return accepted, reasons


def track_call(shopper: str, at: float, number: int) -> dict:
    return {
        "event": "Product Viewed",
        "messageId": f"{shopper}-{number}",
        "userId": shopper,
        "timestamp": iso_time(at),
        "properties": {"category": "Coffee Beans", "price": 9.5},
        "context": {"sessionId": f"{shopper}-visit"},
    }


def test_one_event_from_the_future_is_dead_lettered_and_wipes_no_shoppers_state(model: IntentModel) -> None:
    # the reproduction: 20 shoppers with 5 events each, then one call dated 2999-01-01
    start = 1_767_600_000.0
    clock = FrozenClock(start + 600)  # the worker's clock, a few minutes after the last event
    tracker = tracker_for(model, clock)
    calls = [track_call(f"shopper-{s}", start + 60 * e, e) for e in range(5) for s in range(20)]
    calls.append(track_call("intruder", 32_472_144_000.0, 0))  # 2999-01-01T00:00:00Z
    accepted, rejected = admit(calls, clock())
    assert len(accepted) == 100
    assert len(rejected) == 1 and rejected[0].startswith("timestamp: 2999-01-01T00:00:00.000Z is ")
    assert rejected[0].endswith(
        "s ahead of the worker's clock (2026-01-05T08:10:00.000Z), over the 300 s allowed "
        "(INTENT_MAX_EVENT_AHEAD_SECONDS)"
    )
    tracker.process(accepted, [(number % 4, number) for number in range(len(accepted))])
    tracker.save()
    assert tracker.expire() == (0, 0)
    assert len(tracker.sessions.data) == 20 and len(tracker.shoppers.data) == 20


def test_a_window_expires_by_its_own_partitions_event_clock_not_by_another_partitions(model: IntentModel) -> None:
    start = 1_767_600_000.0
    tracker = tracker_for(model, shopper_days=7.0)  # the wall clock sees every window as fresh
    run(tracker, [event("ada", start)], batch=1)  # on partition 0
    tracker.process([event("bo", start + 30 * 86400)], [(1, 0)])  # partition 1 is a month ahead
    tracker.save()
    assert tracker.expire() == (0, 0)  # ada is a month older than partition 1's clock, not her own
    assert set(tracker.shoppers.data) == {"ada", "bo"}
    assert tracker.event_clocks == {0: start, 1: start + 30 * 86400}

    tracker.process([event("cy", start + 8 * 86400)], [(0, 1)])  # her own partition moves on
    tracker.save()
    assert tracker.expire() == (1, 1)
    assert set(tracker.shoppers.data) == {"bo", "cy"}


def test_a_lagging_partition_catching_up_loses_nothing(model: IntentModel) -> None:
    start = 1_767_600_000.0
    days = 10  # longer than the shoppers' 7-day span: a sweep by another partition's clock wipes them

    def visits(shopper: str) -> list[ShopperEvent]:
        categories = ("Coffee Beans", "Coffee Beans", "Herbal Tea", "Cold & Flu")
        return [
            event(
                shopper,
                start + day * 86400 + 60 * i,
                category=categories[(day + i) % 4],
                context={"sessionId": f"{shopper}-{day}"},
            )
            for day in range(days)
            for i in range(4)
        ]

    ahead = sorted(visits("ada") + visits("bo"), key=lambda e: e.timestamp)  # partition 0, read promptly
    lagging = sorted(visits("cy") + visits("dee"), key=lambda e: e.timestamp)  # partition 1, behind

    in_time = tracker_for(model)  # both partitions read together, never swept
    merged = sorted(
        [(e, (0, n)) for n, e in enumerate(ahead)] + [(e, (1, n)) for n, e in enumerate(lagging)],
        key=lambda pair: pair[0].timestamp,
    )
    expected = in_time.process([e for e, _ in merged], [position for _, position in merged])
    in_time.save()

    tracker = tracker_for(model)
    changes = tracker.process(ahead, [(0, n) for n in range(len(ahead))])
    tracker.save()
    for first in range(0, len(lagging), 8):  # partition 1 catches up, swept after every batch
        chunk = lagging[first : first + 8]
        changes += tracker.process(chunk, [(1, first + n) for n in range(len(chunk))])
        tracker.save()
        tracker.expire()
    assert tracker.stats.expired_shoppers == 0
    for shopper in ("cy", "dee"):
        caught_up = Window.from_bytes(tracker.shoppers.data[shopper])
        reference = Window.from_bytes(in_time.shoppers.data[shopper])
        assert caught_up.events == reference.events
        assert np.allclose(caught_up.hidden_state(), reference.hidden_state(), atol=1e-5)
    assert expected and sorted(c["id"] for c in changes) == sorted(c["id"] for c in expected)


def test_the_windows_of_each_kind_are_bounded_and_the_least_recently_seen_go_first(model: IntentModel) -> None:
    clock = FrozenClock(1_767_600_000.0)
    tracker = IntentTracker(
        model, WindowPolicy(), TombstoneRecordingStore(), TombstoneRecordingStore(), clock=clock, max_windows=3
    )
    evicted_before = WINDOWS_EVICTED.labels("shopper")._value.get()
    for offset, shopper in enumerate(["s3", "s1", "s4", "s0", "s2"]):  # seen in this order, a minute apart
        tracker.process([event(shopper, clock.now, context={"sessionId": "v"})], [(offset % 2, offset)])
        tracker.save()
        clock.now += 60
    assert tracker.expire() == (0, 0)  # nothing is idle: the bound alone removes them
    assert set(tracker.shoppers.data) == {"s4", "s0", "s2"}
    assert set(tracker.sessions.data) == {"s4|v", "s0|v", "s2|v"}
    # each tombstone goes to the changelog partition of the window's input partition
    assert sorted(tracker.shoppers.tombstones) == [("s1", 1), ("s3", 0)]
    assert sorted(tracker.sessions.tombstones) == [("s1|v", 1), ("s3|v", 0)]
    assert (tracker.stats.evicted_shoppers, tracker.stats.evicted_sessions) == (2, 2)
    assert WINDOWS_EVICTED.labels("shopper")._value.get() == evicted_before + 2

    tracker.process([event("s4", clock.now), event("s5", clock.now + 1)], [(0, 5), (1, 6)])  # s4 seen again
    tracker.save()
    tracker.expire()
    assert set(tracker.shoppers.data) == {"s4", "s2", "s5"}


def test_an_explicit_consent_is_remembered_until_the_shopper_states_another(model: IntentModel) -> None:
    start = 1_767_600_000.0

    def consent(allowed: bool) -> dict:
        return {"consent": {"categoryPreferences": {"Personalization": allowed}}}

    anonymous = [
        event("anon", start, known=False, context={"sessionId": "v", **consent(False)}),
        event("anon", start + 60, known=False, context={"sessionId": "v"}),
    ]
    known = [
        event("ada", start, context=consent(False)),
        event("ada", start + 60),
        event("ada", start + 120, context=consent(True)),
        event("ada", start + 180),
    ]
    tracker = tracker_for(model)
    run(tracker, anonymous + known, batch=3)  # choices made and inherited within one micro-batch too
    assert Window.from_bytes(tracker.sessions.data["anon|v"]).personalization_allowed is False
    assert Window.from_bytes(tracker.shoppers.data["ada"]).personalization_allowed is True
    tracker = tracker_for(model)
    run(tracker, known[:2], batch=1)  # and across batches, through the stored window
    assert Window.from_bytes(tracker.shoppers.data["ada"]).personalization_allowed is False
