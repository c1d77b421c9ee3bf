"""Per-session and per-shopper rolling windows: the event-sourced state of the stream.

A window holds the recent raw events (so a new model can re-encode them), the model's recurrent
state after the last event, and the shift detector's state. The app keeps windows in Faust tables
whose changelogs make them survive restarts and rebalances; this module is the pure logic, so it
works the same on a dict in a test.

Two kinds of window:
- session windows, keyed `shopper|session`, the last `session_window_events` events of a visit;
  without a `sessionId` the session is derived: a gap over `session_idle_seconds` starts a new one;
  for a known shopper it keeps only the visit's clock, as the events are in the shopper window;
- shopper windows, keyed by `userId`, the known shopper's last `shopper_window_events` events
  within `shopper_window_days`, so a drift across sessions (coffee on Monday, mint tea on
  Wednesday) is one sequence.
The model and detector run on the shopper window for known shoppers, on the session window for
anonymous ones. Expiry is explicit (`session_expired`, `shopper_expired`), by wall clock or by event
time, whichever says so first, because a replayed stream moves event time faster than the clock. The
event time is that of the window's own input partition: partitions are read at their own pace, and
one that lags must not lose its windows to another's clock.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from intent.events import ShopperEvent

# The event fields a window keeps, under short keys: what the featurization reads (so a new model
# version of the same feature spec can re-encode the window), what IntentChanged shows as
# evidence, and what suggestions need (products bought, prices seen). Ids, locale and consent are
# left out: the window's key names the shopper, and the latest explicit consent is one field of the
# window (`Window.personalization_allowed`), not one per event.
# Windows are rewritten on every update, so their size is changelog traffic.
_SHORT_KEYS: dict[str, str] = {
    "message_id": "m",
    "event_type": "e",
    "timestamp": "t",
    "product_id": "p",
    "product_name": "pn",
    "category": "c",
    "brand": "b",
    "price": "pr",
    "query": "qy",
    "products": "ps",
    "device": "d",
    "channel": "ch",
    "timezone": "tz",
    "segment": "sg",
}
_LONG_KEYS = {short: long for long, short in _SHORT_KEYS.items()}


def compact(event: ShopperEvent) -> dict[str, Any]:
    record = {}
    for long, short in _SHORT_KEYS.items():
        value = getattr(event, long)
        if value is not None and value != ():
            record[short] = value
    return record


def expand(record: dict[str, Any]) -> ShopperEvent:
    """The event as far as the window kept it (enough to encode it again)."""
    fields = {_LONG_KEYS[key]: value for key, value in record.items()}
    fields.setdefault("name", fields["event_type"])
    return ShopperEvent.from_record(fields)


@dataclass(slots=True)
class Window:
    """One window. Its events are kept as their serialized records (`lines`, oldest first) and
    parsed only where they are read (`records`, `tail`): each event loads and stores its window,
    and a known shopper's holds up to 200 events, so parsing them all every time was the
    stream's largest cost after Faust's own."""

    session_id: str | None = None  # the visit this window covers; None for shopper windows
    lines: list[bytes] = field(default_factory=list)  # orjson of compact records, oldest first
    hidden: str | None = None  # the model's recurrent state, base64 float32
    detector: list[Any] = field(default_factory=lambda: [None, None, 0])
    model_version: str | None = None  # the model that produced `hidden` and `detector`
    last_event_time: float = 0.0
    last_seen: float = 0.0  # wall clock of the last update
    partition: int = 0  # of the input topic: where the window's changelog entries go
    last_offset: int = -1  # input offset of the last event applied: replays are recognised
    # a next-basket model's shopper window: decayed counts of the baskets that held each category
    # (`intent.history.PurchaseHistory`), forgotten with the window
    purchases: dict[str, Any] | None = None
    # the shopper's latest explicit personalization choice (None: never stated), which an event that
    # says nothing about consent inherits: a refusal holds until the shopper says otherwise
    personalization_allowed: bool | None = None

    def to_bytes(self) -> bytes:
        """A JSON header line, then one line per event record (orjson never writes a raw newline).
        The optional fields close the header, written only up to the last one set: a header
        without them, as stored before they existed, reads them as unset."""
        optional = [self.purchases, self.personalization_allowed]
        while optional and optional[-1] is None:
            optional.pop()
        header = orjson.dumps(
            [
                self.session_id,
                self.hidden,
                self.detector,
                self.model_version,
                self.last_event_time,
                self.last_seen,
                self.partition,
                self.last_offset,
                *optional,
            ]
        )
        return b"\n".join([header, *self.lines])

    @classmethod
    def from_bytes(cls, raw: bytes) -> Window:
        header, *lines = raw.split(b"\n")
        session_id, *state = orjson.loads(header)
        return cls(session_id, lines, *state)

    def append(self, record: dict[str, Any]) -> None:
        self.lines.append(orjson.dumps(record))

    def records(self) -> list[dict[str, Any]]:
        """Every event record, oldest first."""
        return parse_records(self.lines)

    def visit_categories(self) -> set[str]:
        """The categories of the events since the previous `Order Completed` (the last record, if it
        is one, is the visit's own order): what the basket that just ended held."""
        categories: set[str] = set()
        for line in reversed(self.lines[:-1]):
            record = orjson.loads(line)
            if record["e"] == "Order Completed":
                break
            if "c" in record:
                categories.add(record["c"])
        return categories

    def tail(self, count: int) -> list[dict[str, Any]]:
        """The last `count` event records, oldest first."""
        return parse_records(self.lines[-count:]) if count > 0 else []

    def hidden_state(self) -> np.ndarray | None:
        if self.hidden is None:
            return None
        return np.frombuffer(base64.b64decode(self.hidden), dtype=np.float32)

    def set_hidden_state(self, state: np.ndarray) -> None:
        self.hidden = base64.b64encode(np.ascontiguousarray(state, dtype=np.float32).tobytes()).decode()

    def previous_timestamp(self) -> float | None:
        return orjson.loads(self.lines[-1])["t"] if self.lines else None

    def reset_model_state(self) -> None:
        self.hidden, self.detector, self.model_version = None, [None, None, 0], None


def parse_records(lines: list[bytes]) -> list[dict[str, Any]]:
    """Serialized event records (`Window.lines`) as dicts, in one call: cheaper than one per record."""
    return orjson.loads(b"[" + b",".join(lines) + b"]")


def session_key(event: ShopperEvent) -> str:
    return f"{event.shopper_id}|{event.session_id or '-'}"


@dataclass(frozen=True)
class WindowPolicy:
    """How much each window keeps; the worker's comes from its domain, where a window setting does
    not override it (`intent.domain.effective_window_policy`). The defaults are the demo domain's."""

    session_events: int = 50
    session_idle_seconds: float = 1800.0
    shopper_events: int = 200
    shopper_days: float = 7.0

    def session_for(self, window: Window | None, event: ShopperEvent) -> Window:
        """The session window `event` belongs to: the current one, or a new one when the event
        starts a new visit (a new `sessionId`, or without one, a gap longer than a visit)."""
        derived_visit_over = (
            window is not None
            and event.session_id is None
            and event.timestamp - window.last_event_time > self.session_idle_seconds
        )
        if window is None or derived_visit_over:
            return Window(session_id=event.session_id or f"{event.shopper_id}/{event.message_id}")
        return window

    def add_to_session(self, window: Window, event: ShopperEvent, now: float) -> None:
        self._append(window, event, now)
        if len(window.lines) > self.session_events:
            # a new list, not a cut in place: the tracker holds the old one as this moment's evidence
            window.lines = window.lines[-self.session_events :]

    @staticmethod
    def touch_session(window: Window, event: ShopperEvent, now: float) -> None:
        """A known shopper's visit keeps only its clock: the events are in the shopper window,
        which the model reads, and storing them twice would double the changelog traffic."""
        window.last_event_time = max(window.last_event_time, event.timestamp)
        window.last_seen = now

    def add_to_shopper(self, window: Window, event: ShopperEvent, now: float) -> None:
        self._append(window, event, now)
        lines = window.lines
        oldest = event.timestamp - self.shopper_days * 86400
        keep_from = 0  # the first event within the span: usually the first one, one parse
        while keep_from < len(lines) and orjson.loads(lines[keep_from])["t"] < oldest:
            keep_from += 1
        drop = max(keep_from, len(lines) - self.shopper_events)
        if drop:
            window.lines = lines[drop:]  # a new list: see add_to_session

    @classmethod
    def _append(cls, window: Window, event: ShopperEvent, now: float) -> None:
        window.append(compact(event))
        cls.touch_session(window, event, now)

    def session_expired(self, window: Window, now: float, event_time: float) -> bool:
        """Idle for longer than a visit lasts, by the clock or by `event_time`, the event clock of
        the window's partition."""
        idle = self.session_idle_seconds
        return now - window.last_seen > idle or event_time - window.last_event_time > idle

    def shopper_expired(self, window: Window, now: float, event_time: float) -> bool:
        span = self.shopper_days * 86400
        return now - window.last_seen > span or event_time - window.last_event_time > span
