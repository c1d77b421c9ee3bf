"""Window -> features -> model -> detector: the stream's work for a micro-batch of events.

Independent of Faust: the windows live in any mutable mapping of bytes (the app passes its
changelog-backed tables, tests pass dicts), so the same code is unit-tested, benchmarked and served.
A micro-batch is processed in rounds: round r holds the r-th event of every window in the batch,
so each window still sees its events in order while the model runs once per round for all of them.

Delivery is at-least-once, so a restarted worker may read events again whose effects its restored
windows already hold: each window records the input offset of its last event and skips replays.
`process` computes; `save` writes the windows. The app saves only after the IntentChanged events
are acknowledged, so a crash in between repeats a change (with the same id) but never loses one.
`keep` holds a call's windows unsaved for the next calls: a failed batch is redone event by event and
its windows saved once, with its changes acknowledged. A redo does not teach the crowd an event twice.

`expire` sweeps idle windows away, judging each by the event clock of its own input partition
(partitions are read at their own pace), and keeps the windows of each kind within a bound, the
least recently seen evicted first, so made-up shopper ids cannot exhaust the worker's memory.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from intent import observability as metrics
from intent.changes import EVIDENCE_EVENTS, build_intent_changed
from intent.detector import DetectorState, ShiftDetector
from intent.events import ShopperEvent
from intent.features import FEATURE_COLUMNS, OUT_OF_VOCABULARY
from intent.history import PurchaseHistory, RankingWeights, category_scores
from intent.model import NEXT_BASKET, IntentModel, ModelError
from intent.stores import KeyValueStore
from intent.window import Row, Window, WindowPolicy, as_records, expand, session_key

CATEGORY_COLUMN = FEATURE_COLUMNS.index("category")

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Step:
    event: ShopperEvent
    window: Window
    scope: str
    key: str
    features: list[int]
    # the window's events after this event: the first `window_length` of `window_events`
    # (windows only append to a list or replace it, never cut one in place, so no copy is needed)
    window_events: list[Row]
    window_length: int
    personalization_allowed: bool | None  # the shopper's latest explicit choice as of this event


@dataclass
class TrackerStats:
    events: int = 0
    intent_changes: int = 0
    model_calls: int = 0
    reencoded_windows: int = 0
    replayed_events: int = 0
    expired_sessions: int = 0
    expired_shoppers: int = 0
    evicted_sessions: int = 0
    evicted_shoppers: int = 0
    batches: int = 0
    model_seconds: float = 0.0  # time inside onnxruntime


class IntentTracker:
    def __init__(
        self,
        model: IntentModel,
        policy: WindowPolicy,
        sessions: KeyValueStore,
        shoppers: KeyValueStore,
        clock: Callable[[], float] = time.time,
        observe_inference: Callable[[float], None] | None = None,
        observe_event: Callable[[ShopperEvent, Window], None] | None = None,
        enrich_change: Callable[[dict[str, Any], list[dict[str, Any]], Mapping[str, float] | None], dict[str, Any]]
        | None = None,
        max_windows: int | None = None,
    ) -> None:
        """`observe_event(event, window)` sees every new event with its window before it (the
        crowd counts learn from it); `enrich_change(change, window_events, category_scores)`
        returns the change to emit (suggestions and holdout are added there), given the window's
        records and, for a next-basket model, this shopper's category ranking. `max_windows`
        bounds the session windows and the shopper windows each (None: no bound)."""
        self.model = model
        self.policy = policy
        self.sessions = sessions
        self.shoppers = shoppers
        self.clock = clock
        self._observe_inference = observe_inference
        self._observe_event = observe_event
        self._enrich_change = enrich_change
        self.max_windows = max_windows
        self.detector = ShiftDetector(model.detector_config, model.browsing_index)
        self.ranking = _ranking(model)
        # per input partition, the latest event time read from it: the partition's clock for expiry
        self.event_clocks: dict[int, float] = {}
        self.model_problem: str | None = None  # why the last model activation failed
        self.stats = TrackerStats()
        self._dirty_sessions: dict[str, Window] = {}
        self._dirty_shoppers: dict[str, Window] = {}
        # windows kept by `keep` until `save`: serialized, so a later call that fails leaves them intact
        self._kept_sessions: dict[str, tuple[bytes, int]] = {}
        self._kept_shoppers: dict[str, tuple[bytes, int]] = {}
        self._observed: set[tuple[int, int]] = set()  # input positions `observe_event` saw since `save`

    def activate(self, model: IntentModel) -> None:
        """Serve a new model version; windows are re-encoded with it when next touched.

        The model must answer a probe inference first. If it does not, `ModelError` is raised, the
        previous model goes on serving, and `model_ready` is False (the worker's `/readyz` says not
        ready, so a rollout stops there) until a model that answers is activated.
        """
        try:
            model.probe()
        except ModelError as error:
            self.model_problem = str(error)
            raise
        self.model = model
        self.detector = ShiftDetector(model.detector_config, model.browsing_index)
        self.ranking = _ranking(model)
        self.model_problem = None

    @property
    def model_ready(self) -> bool:
        """The served model loaded and answered its probe, and no activation since failed."""
        return self.model_problem is None

    def process(
        self,
        events: Sequence[ShopperEvent],
        positions: Sequence[tuple[int, int]] | None = None,
    ) -> list[dict[str, Any]]:
        """Feed events in stream order, with the (partition, offset) each came from; returns the
        IntentChanged events they cause. Call `save` to store the windows (or `keep`). A call
        that raises changes no window: its events can be processed again."""
        now = self.clock()
        self._dirty_sessions, self._dirty_shoppers = {}, {}
        session_windows: dict[str, Window] = {}  # the call's windows, for `save` once it succeeded
        shopper_windows: dict[str, Window] = {}
        rounds: list[list[_Step]] = []
        steps_per_window: dict[int, int] = defaultdict(int)
        clocks = self.event_clocks
        for number, event in enumerate(events):
            partition, offset = positions[number] if positions else (0, -1)
            clocks[partition] = max(clocks.get(partition, 0.0), event.timestamp)
            key = session_key(event)
            session = self.policy.session_for(
                session_windows.get(key) or _load(self.sessions, self._kept_sessions, key), event
            )
            session_windows[key] = session
            if event.user_id:
                scope, state_key = "shopper", event.user_id
                state = (
                    shopper_windows.get(state_key) or _load(self.shoppers, self._kept_shoppers, state_key) or Window()
                )
                shopper_windows[state_key] = state
            else:
                scope, state_key, state = "session", key, session
            if _applied(state, partition, offset):
                self.stats.replayed_events += 1
                if not _applied(session, partition, offset):
                    # a known shopper's window was saved with the event, her visit's was not (a failed
                    # changelog write): the visit's clock is brought up to date, its event is not applied again
                    self.policy.touch_session(session, event, now)
                    session.partition, session.last_offset = partition, offset
                continue  # already in the restored window: applied before a restart
            session.partition = state.partition = partition
            session.last_offset = state.last_offset = offset
            if event.personalization_allowed is not None:
                state.personalization_allowed = event.personalization_allowed
            self._ensure_model_state(state)
            features = self.model.featurizer.encode(event, state.previous_timestamp())
            if self._observe_event is not None and (partition, offset) not in self._observed:
                self._observe_event(event, state)
                if offset >= 0:  # a redo of this event (a failed batch, event by event) is not news
                    self._observed.add((partition, offset))
            if state is session:
                self.policy.add_to_session(session, event, now)
            else:
                self.policy.touch_session(session, event, now)
                self.policy.add_to_shopper(state, event, now)
                if self.ranking is not None and event.event_type == "Order Completed":
                    state.purchases = self.ranking.add_basket(state.purchases, state.visit_categories())
            position = steps_per_window[id(state)]
            steps_per_window[id(state)] += 1
            if position == len(rounds):
                rounds.append([])
            rounds[position].append(
                _Step(
                    event,
                    state,
                    scope,
                    state_key,
                    features,
                    state.events,
                    len(state.events),
                    state.personalization_allowed,
                )
            )

        changes = [change for steps in rounds for change in self._run_round(steps)]
        self._dirty_sessions, self._dirty_shoppers = session_windows, shopper_windows
        self.stats.events += len(events)
        self.stats.intent_changes += len(changes)
        self.stats.batches += 1
        return changes

    def keep(self) -> None:
        """Hold the windows the last `process` call changed, unsaved, for the next calls to build on."""
        for kept, dirty in ((self._kept_sessions, self._dirty_sessions), (self._kept_shoppers, self._dirty_shoppers)):
            for key, window in dirty.items():
                kept[key] = (window.to_bytes(), window.partition)
            dirty.clear()

    def save(self) -> None:
        """Store the windows the last `process` call changed and those kept since the last save."""
        self.keep()
        for store, kept in ((self.sessions, self._kept_sessions), (self.shoppers, self._kept_shoppers)):
            for key, (raw, partition) in kept.items():
                store.put(key, raw, partition)
            kept.clear()
        self._observed.clear()

    def _run_round(self, steps: list[_Step]) -> list[dict[str, Any]]:
        features = np.array([step.features for step in steps], dtype=np.int64)
        hidden = np.stack([_hidden_or_zeros(step.window, self.model) for step in steps])
        started = time.perf_counter()
        probabilities, next_hidden, category_probabilities = self.model.step_outputs(features, hidden)
        seconds = time.perf_counter() - started
        self.stats.model_seconds += seconds
        if self._observe_inference is not None:
            self._observe_inference(seconds)
        self.stats.model_calls += 1
        changes = []
        for number, (step, distribution, state) in enumerate(zip(steps, probabilities, next_hidden, strict=True)):
            window = step.window
            window.set_hidden_state(state)
            window.model_version = self.model.version
            shift = None
            # An event whose category the model has never seen carries no evidence of intent (a
            # shop's own, unmapped categories): it moves the model's state but not the detector.
            if step.features[CATEGORY_COLUMN] != OUT_OF_VOCABULARY:
                detector_state = DetectorState.from_list(window.detector)
                shift = self.detector.update(detector_state, distribution)
                window.detector = detector_state.to_list()
            if shift is not None:
                window_events = as_records(step.window_events[: step.window_length])
                change = build_intent_changed(
                    model=self.model,
                    shift=shift,
                    probabilities=distribution,
                    event=step.event,
                    scope=step.scope,
                    window_key=step.key,
                    window_events=window_events[-EVIDENCE_EVENTS:],
                    segment=step.event.segment or window.last_segment(),
                    personalization_allowed=step.personalization_allowed,
                )
                if self._enrich_change is not None:
                    scores = None
                    if self.ranking is not None and category_probabilities is not None and step.scope == "shopper":
                        scores = self.ranking.scores(window.purchases, category_probabilities[number])
                    change = self._enrich_change(change, window_events, scores)
                changes.append(change)
        return changes

    def _ensure_model_state(self, window: Window) -> None:
        """A window last served by another model version is re-encoded from its raw events."""
        if window.model_version in (None, self.model.version):
            return
        events = [expand(record) for record in window.records()]
        window.reset_model_state()
        self.stats.reencoded_windows += 1
        if not events:
            return
        features = self.model.featurizer.encode_sequence(events)
        hidden = self.model.initial_hidden()
        detector_state = DetectorState()
        for row in features:
            probabilities, hidden = self.model.step(row[None, :], hidden)
            if row[CATEGORY_COLUMN] != OUT_OF_VOCABULARY:  # as in `_run_round`
                self.detector.update(detector_state, probabilities[0])  # silently: history, not news
        window.set_hidden_state(hidden[0])
        window.detector = detector_state.to_list()
        window.model_version = self.model.version

    def expire(self) -> tuple[int, int]:
        """Remove idle sessions and shoppers past their span, then, past `max_windows` of a kind,
        the least recently seen (counted in `stats` and `intent_windows_evicted_total`); returns
        how many sessions and shoppers expired."""
        now = self.clock()
        expired_sessions, evicted_sessions = self._sweep(self.sessions, self.policy.session_expired, now)
        expired_shoppers, evicted_shoppers = self._sweep(self.shoppers, self.policy.shopper_expired, now)
        self.stats.expired_sessions += expired_sessions
        self.stats.expired_shoppers += expired_shoppers
        self.stats.evicted_sessions += evicted_sessions
        self.stats.evicted_shoppers += evicted_shoppers
        metrics.WINDOWS_EVICTED.labels("session").inc(evicted_sessions)
        metrics.WINDOWS_EVICTED.labels("shopper").inc(evicted_shoppers)
        if evicted_sessions or evicted_shoppers:
            log.warning(
                "over the bound of %d windows of a kind: evicted the %d least recently seen sessions and %d shoppers",
                self.max_windows,
                evicted_sessions,
                evicted_shoppers,
            )
        return expired_sessions, expired_shoppers

    def _sweep(
        self, store: KeyValueStore, expired: Callable[[Window, float, float], bool], now: float
    ) -> tuple[int, int]:
        """Expire the idle windows of `store`, then evict the excess; returns how many of each.
        Removals write tombstones to the window's changelog partition (`store.delete`)."""
        expired_count = 0
        kept: list[tuple[float, str, int]] = []  # (last seen, key, partition) of each window kept
        for key, raw in store.items():
            window = Window.from_bytes(raw)
            # a partition without events since the start has no clock yet: only the wall clock judges
            if expired(window, now, self.event_clocks.get(window.partition, 0.0)):
                store.delete(key, window.partition)
                expired_count += 1
            elif self.max_windows is not None:
                kept.append((window.last_seen, key, window.partition))
        excess = 0 if self.max_windows is None else max(0, len(kept) - self.max_windows)
        for _, key, partition in heapq.nsmallest(excess, kept):  # O(n log excess): no full sort
            store.delete(key, partition)
        return expired_count, excess


@dataclass(frozen=True)
class _Ranking:
    """What a next-basket model's category ranking needs beside the window (from its metadata)."""

    categories: tuple[str, ...]
    popularity: np.ndarray
    weights: RankingWeights
    intent_of: dict[str, str]  # category -> its intent, as the model's domain maps it

    def add_basket(self, purchases: dict[str, Any] | None, categories: set[str]) -> dict[str, Any]:
        history = PurchaseHistory.from_json(purchases)
        intents = {self.intent_of[c] for c in categories if c in self.intent_of}
        history.add_basket(categories, self.weights.decay, intents)
        return history.to_json()

    def scores(self, purchases: dict[str, Any] | None, probabilities: np.ndarray) -> dict[str, float]:
        history = PurchaseHistory.from_json(purchases)
        ranked = category_scores(history, self.categories, self.popularity, self.weights, probabilities)
        return dict(zip(self.categories, ranked.tolist(), strict=True))


def _ranking(model: IntentModel) -> _Ranking | None:
    if model.target != NEXT_BASKET:
        return None
    return _Ranking(
        model.categories,
        np.asarray(model.metadata["category_popularity"], dtype=np.float64),
        RankingWeights.from_json(model.metadata["ranking"]),
        {
            category: intent
            for category, intent in zip(model.categories, model.metadata["category_intents"], strict=True)
            if intent is not None
        },
    )


def _applied(window: Window, partition: int, offset: int) -> bool:
    """Whether `window` already holds the event read at `offset` of `partition` (a replay)."""
    return 0 <= offset <= window.last_offset and partition == window.partition


def _load(table: KeyValueStore, kept: dict[str, tuple[bytes, int]], key: str) -> Window | None:
    """A fresh copy of the window at `key`: the one kept unsaved, else the stored one."""
    raw = kept[key][0] if key in kept else table.get(key)
    return None if raw is None else Window.from_bytes(raw)


def _hidden_or_zeros(window: Window, model: IntentModel) -> np.ndarray:
    state = window.hidden_state()
    return np.zeros(model.hidden_size, dtype=np.float32) if state is None else state
