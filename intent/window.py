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
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import zstandard

from intent.events import EVENT_TYPES, OTHER_EVENT, ShopperEvent

# A window keeps each event as a row: a tuple of the fields below, the values of the event (not a
# copy of its JSON), and only what its readers read: the featurization (so a new model version of the
# same feature spec can re-encode the window), suggestions (products bought, prices seen), the read
# API's timeline (products with their names) and IntentChanged, whose evidence shows the last
# EVIDENCE_EVENTS events with their message ids. So an event keeps its message id and brand only
# while it is one of those; older ones keep the rest. Ids, locale and consent are left out: the
# window's key names the shopper, and the latest explicit consent is one field of the window
# (`Window.personalization_allowed`).
# A product is (product_id, name, category, brand, price), a context (device, channel, timezone,
# segment): within a window they repeat, so the stored form writes each distinct one once.
EVIDENCE_EVENTS = 5
MESSAGE_ID, TIMESTAMP, EVENT_TYPE, PRODUCT, CONTEXT, QUERY, ORDER = range(7)
Row = tuple[str | None, float, str, tuple[Any, ...] | None, tuple[Any, ...], str | None, list[str] | None]

# Records are the rows as dicts under short keys, for the readers of a window (evidence,
# suggestions, crowd, re-encoding); `expand` turns one back into an event.
_PRODUCT_KEYS = ("p", "pn", "c", "b", "pr")
_CONTEXT_KEYS = ("d", "ch", "tz", "sg")
_LONG_KEYS = {
    "m": "message_id",
    "e": "event_type",
    "t": "timestamp",
    "p": "product_id",
    "pn": "product_name",
    "c": "category",
    "b": "brand",
    "pr": "price",
    "qy": "query",
    "ps": "products",
    "d": "device",
    "ch": "channel",
    "tz": "timezone",
    "sg": "segment",
}
_NO_PRODUCT = (None, None, None, None, None)

# The stored form. Windows are rewritten on every update, so their size is changelog traffic, and
# held for every shopper, so it is the worker's memory (or disk): a full shopper window was 41 KB
# as JSON lines, most of it the same product names and context strings again and again.
#   version byte (2) | header length (u32) | hidden-state length (u16) | header | hidden | events
# The header is JSON; the recurrent state raw float32; the events a zstd-compressed JSON array of
# columns, each repeated value once in a table (`_pack_events`). The events are unpacked only when
# read: the expiry sweep and erasure read the header alone, and a known shopper's visit, which
# keeps only its clock, is stored again without unpacking its (empty) events.
# Format 1, the JSON header line and one JSON line per event, is still read: its first byte is "[".
_FORMAT = 2
_PREFIX = struct.Struct(">BIH")
# zstd rather than zlib: at level 1 as small as zlib's level 6 in a tenth of the time; its higher levels
# save 1-3% at 2-10 times the time (benchmarks/state.py measures a store)
_COMPRESSOR = zstandard.ZstdCompressor(level=1)
# format 2 writes an event type as its number here: the list may grow at its end, never change order
_EVENT_NAMES = dict(enumerate((*EVENT_TYPES, OTHER_EVENT)))
_EVENT_NUMBERS = {name: number for number, name in _EVENT_NAMES.items()}
_DECOMPRESSOR = zstandard.ZstdDecompressor()


def compact(event: ShopperEvent) -> Row:
    """The row the window keeps of `event`."""
    product = (event.product_id, event.product_name, event.category, event.brand, event.price)
    return (
        event.message_id,
        event.timestamp,
        event.event_type,
        None if product == _NO_PRODUCT else product,
        (event.device, event.channel, event.timezone, event.segment),
        event.query,
        list(event.products) or None,
    )


def past_evidence(row: Row) -> Row:
    """What the window keeps of an event once it is older than the evidence: no message id or brand."""
    product = row[PRODUCT]
    if product is not None:
        product_id, name, category, _, price = product
        product = None if product_id is name is category is price is None else (product_id, name, category, None, price)
    return (None, row[TIMESTAMP], row[EVENT_TYPE], product, *row[CONTEXT:])


def as_record(row: Row) -> dict[str, Any]:
    """A row as a dict under short keys, without its empty fields. Spelled out: the crowd reads the
    window's last records on every event."""
    message_id, timestamp, event_type, product, context, query, order = row
    record: dict[str, Any] = {"e": event_type, "t": timestamp}
    if message_id is not None:
        record["m"] = message_id
    if product is not None:
        product_id, name, category, brand, price = product
        if product_id is not None:
            record["p"] = product_id
        if name is not None:
            record["pn"] = name
        if category is not None:
            record["c"] = category
        if brand is not None:
            record["b"] = brand
        if price is not None:
            record["pr"] = price
    if query is not None:
        record["qy"] = query
    if order:
        record["ps"] = order
    device, channel, timezone, segment = context
    if device is not None:
        record["d"] = device
    if channel is not None:
        record["ch"] = channel
    if timezone is not None:
        record["tz"] = timezone
    if segment is not None:
        record["sg"] = segment
    return record


def as_records(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [as_record(row) for row in rows]


def expand(record: dict[str, Any]) -> ShopperEvent:
    """The event as far as the window kept it (enough to encode it again)."""
    fields = {_LONG_KEYS[key]: value for key, value in record.items()}
    fields.setdefault("name", fields["event_type"])
    fields.setdefault("message_id", "")  # past the evidence
    return ShopperEvent.from_record(fields)


def _row_from_record(record: dict[str, Any]) -> Row:
    """A format-1 record (a dict under short keys) as a row."""
    product = tuple(record.get(key) for key in _PRODUCT_KEYS)
    return (
        record["m"],
        record["t"],
        record["e"],
        None if product == _NO_PRODUCT else product,
        tuple(record.get(key) for key in _CONTEXT_KEYS),
        record.get("qy"),
        record.get("ps"),
    )


class Window:
    """One window: its events as rows (`events`, oldest first), the model's recurrent state after
    the last one, the detector's state, and the clocks and input position of the last update.

    `events` is a list that updates append to or replace, never cut in place, so a reader may keep
    the list and a length as the window at one moment (the tracker does, as a change's evidence)."""

    __slots__ = (
        "_events",
        "_packed_events",
        "detector",
        "hidden",
        "last_event_time",
        "last_offset",
        "last_seen",
        "model_version",
        "partition",
        "personalization_allowed",
        "purchases",
        "session_id",
    )

    def __init__(
        self,
        session_id: str | None = None,
        events: list[Row] | None = None,
        hidden: bytes | None = None,
        detector: list[Any] | None = None,
        model_version: str | None = None,
        last_event_time: float = 0.0,
        last_seen: float = 0.0,
        partition: int = 0,
        last_offset: int = -1,
        purchases: dict[str, Any] | None = None,
        personalization_allowed: bool | None = None,
    ) -> None:
        self.session_id = session_id  # the visit this window covers; None for shopper windows
        self._events = [] if events is None else events
        self._packed_events: bytes | None = None  # the stored events, until they are read
        self.hidden = hidden  # the model's recurrent state, float32 bytes
        self.detector = [None, None, 0] if detector is None else detector
        self.model_version = model_version  # the model that produced `hidden` and `detector`
        self.last_event_time = last_event_time
        self.last_seen = last_seen  # wall clock of the last update
        self.partition = partition  # of the input topic: where the window's changelog entries go
        self.last_offset = last_offset  # input offset of the last event applied: replays are recognised
        # a next-basket model's shopper window: decayed counts of the baskets that held each category
        # (`intent.history.PurchaseHistory`), forgotten with the window
        self.purchases = purchases
        # the shopper's latest explicit personalization choice (None: never stated), which an event
        # that says nothing about consent inherits: a refusal holds until the shopper says otherwise
        self.personalization_allowed = personalization_allowed

    @property
    def events(self) -> list[Row]:
        if self._packed_events is not None:
            self._events = _unpack_events(self._packed_events)
            self._packed_events = None
        return self._events

    @events.setter
    def events(self, rows: list[Row]) -> None:
        self._events, self._packed_events = rows, None

    def _state(self) -> tuple[Any, ...]:
        return (
            self.session_id,
            self.events,
            self.hidden,
            self.detector,
            self.model_version,
            self.last_event_time,
            self.last_seen,
            self.partition,
            self.last_offset,
            self.purchases,
            self.personalization_allowed,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Window) and self._state() == other._state()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Window{self._state()!r}"

    def to_bytes(self) -> bytes:
        header = orjson.dumps(
            [
                self.session_id,
                self.detector,
                self.model_version,
                self.last_event_time,
                self.last_seen,
                self.partition,
                self.last_offset,
                self.purchases,
                self.personalization_allowed,
            ]
        )
        hidden = self.hidden or b""
        packed = self._packed_events if self._packed_events is not None else _pack_events(self._events)
        return b"".join([_PREFIX.pack(_FORMAT, len(header), len(hidden)), header, hidden, packed])

    @classmethod
    def from_bytes(cls, raw: bytes) -> Window:
        if raw[:1] == b"[":
            return cls._from_format_1(raw)
        version, header_length, hidden_length = _PREFIX.unpack_from(raw)
        if version != _FORMAT:
            raise ValueError(f"a window of format {version}: this version reads formats 1 and {_FORMAT}")
        start = _PREFIX.size
        session_id, detector, model_version, *clocks, purchases, consent = orjson.loads(
            raw[start : start + header_length]
        )
        start += header_length
        window = cls(
            session_id,
            None,
            raw[start : start + hidden_length] or None,
            detector,
            model_version,
            *clocks,
            purchases=purchases,
            personalization_allowed=consent,
        )
        packed = raw[start + hidden_length :]
        if packed:
            window._packed_events = packed
        return window

    @classmethod
    def _from_format_1(cls, raw: bytes) -> Window:
        """A JSON header line, then one line per event record. The optional fields closed the
        header, written only up to the last one set: a header without them reads them as unset."""
        header, *lines = raw.split(b"\n")
        session_id, hidden, *state = orjson.loads(header)
        rows = [_row_from_record(record) for record in parse_records(lines)]
        rows[:-EVIDENCE_EVENTS] = map(past_evidence, rows[:-EVIDENCE_EVENTS])
        return cls(session_id, rows, None if hidden is None else base64.b64decode(hidden), *state)

    def append(self, row: Row) -> None:
        events = self.events
        if len(events) < EVIDENCE_EVENTS:
            events.append(row)
        else:  # a new list, not a change in place: see the class docstring
            older, leaving, newer = events[:-EVIDENCE_EVENTS], events[-EVIDENCE_EVENTS], events[1 - EVIDENCE_EVENTS :]
            self.events = [*older, past_evidence(leaving), *newer, row]

    def records(self) -> list[dict[str, Any]]:
        """Every event record, oldest first."""
        return as_records(self.events)

    def tail(self, count: int) -> list[dict[str, Any]]:
        """The last `count` event records, oldest first."""
        return as_records(self.events[-count:]) if count > 0 else []

    def visit_categories(self) -> set[str]:
        """The categories of the events since the previous `Order Completed` (the last event, if it
        is one, is the visit's own order): what the basket that just ended held."""
        categories: set[str] = set()
        for row in reversed(self.events[:-1]):
            if row[EVENT_TYPE] == "Order Completed":
                break
            product = row[PRODUCT]
            if product is not None and product[2] is not None:
                categories.add(product[2])
        return categories

    def last_segment(self) -> str | None:
        """The segment of the newest event that names one."""
        return next((row[CONTEXT][3] for row in reversed(self.events) if row[CONTEXT][3] is not None), None)

    def hidden_state(self) -> np.ndarray | None:
        return None if self.hidden is None else np.frombuffer(self.hidden, dtype=np.float32)

    def set_hidden_state(self, state: np.ndarray) -> None:
        self.hidden = np.ascontiguousarray(state, dtype=np.float32).tobytes()

    def previous_timestamp(self) -> float | None:
        events = self.events
        return events[-1][TIMESTAMP] if events else None

    def reset_model_state(self) -> None:
        self.hidden, self.detector, self.model_version = None, [None, None, 0], None


def parse_records(lines: list[bytes]) -> list[dict[str, Any]]:
    """Serialized event records (format 1) as dicts, in one call: cheaper than one per record."""
    return orjson.loads(b"[" + b",".join(lines) + b"]")


def _pack_events(rows: list[Row]) -> bytes:
    """Rows as columns (`_unpack_events` reverses it): event types as their number in EVENT_TYPES
    (another name as itself); products, contexts and queries each as a table of the distinct values
    and their index per event, a product past the evidence without its empty brand;
    timestamps as the differences in milliseconds where that is exact (a timestamp with finer digits
    keeps them all)."""
    if not rows:
        return b""
    message_ids, timestamps, event_types, products, contexts, queries, orders = zip(*rows, strict=True)
    times = np.array(timestamps, dtype=np.float64)
    milliseconds = np.rint(times * 1000)
    if np.array_equal(milliseconds / 1000, times):
        time_column: list[Any] = np.diff(milliseconds.astype(np.int64), prepend=0).tolist()
        in_milliseconds = True
    else:
        time_column, in_milliseconds = list(timestamps), False
    columns = [
        message_ids,
        in_milliseconds,
        time_column,
        orders,
        list(map(_EVENT_NUMBERS.get, event_types, event_types)),
    ]
    for values in (products, contexts, queries):
        table = list(dict.fromkeys(values))  # in order of first use: the same rows pack the same
        index = {value: number for number, value in enumerate(table)}
        columns += [table, list(map(index.__getitem__, values))]
    columns[5] = [_without_brand(product) for product in columns[5]]
    return _COMPRESSOR.compress(orjson.dumps(columns))


def _unpack_events(packed: bytes) -> list[Row]:
    message_ids, in_milliseconds, time_column, orders, types, *tables = orjson.loads(_DECOMPRESSOR.decompress(packed))
    timestamps = (np.cumsum(np.array(time_column, dtype=np.int64)) / 1000).tolist() if in_milliseconds else time_column
    product_table, products, context_table, contexts, query_table, queries = tables
    product_table = [
        None if p is None else (p[0], p[1], p[2], None, p[3]) if len(p) == 4 else tuple(p) for p in product_table
    ]
    context_table = [tuple(context) for context in context_table]
    return list(
        zip(
            message_ids,
            timestamps,
            map(_EVENT_NAMES.get, types, types),
            map(product_table.__getitem__, products),
            map(context_table.__getitem__, contexts),
            map(query_table.__getitem__, queries),
            orders,
            strict=True,
        )
    )


def _without_brand(product: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    """A product as packed: without its brand where it is empty (past the evidence)."""
    if product is None or product[3] is not None:
        return product
    return (product[0], product[1], product[2], product[4])


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
        if len(window.events) > self.session_events:
            # a new list, not a cut in place: the tracker holds the old one as this moment's evidence
            window.events = window.events[-self.session_events :]

    @staticmethod
    def touch_session(window: Window, event: ShopperEvent, now: float) -> None:
        """A known shopper's visit keeps only its clock: the events are in the shopper window,
        which the model reads, and storing them twice would double the changelog traffic."""
        window.last_event_time = max(window.last_event_time, event.timestamp)
        window.last_seen = now

    def add_to_shopper(self, window: Window, event: ShopperEvent, now: float) -> None:
        self._append(window, event, now)
        events = window.events
        oldest = event.timestamp - self.shopper_days * 86400
        keep_from = 0  # the first event within the span: usually the first one
        while keep_from < len(events) and events[keep_from][TIMESTAMP] < oldest:
            keep_from += 1
        drop = max(keep_from, len(events) - self.shopper_events)
        if drop:
            window.events = events[drop:]  # a new list: see add_to_session

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
