"""The last intent changes of each shopper, for the read side: a table with a changelog.

The delivery agent reads every IntentChanged (keyed by shopper, on the partition numbered as the
shopper's input partition, so the worker that owns her windows owns her changes too) and records it
here as it reached the agent, with its suggestions and holdout flag, whether or not the delivery
policy then lets it out: consent and sensitivity are applied again whenever it is read
(`intent.read.answers`). An entry holds the newest `MAX_CHANGES` changes of one shopper; a change
emitted again (a redone micro-batch, same id) replaces itself. Erasure removes the entry
(`intent.erasure.erase_state`); `expire` forgets a shopper whose newest change is older than the
shopper window's span and, past a bound, those changed least recently.

An entry is a header line (the input partition whose changelog partition it belongs to, and when its
newest change was detected) and one line per change, oldest first, so the expiry sweep reads
headers only. A change is about 2.5 KB (five evidence events, five suggestions with their reasons).
"""

from __future__ import annotations

import heapq
from typing import Any

import orjson

from intent.events import parse_time
from intent.stores import KeyValueStore

MAX_CHANGES = 20
# What the read side shows of a change; the rest (top intents, session id, segment) stays the
# webhook's, since an entry is rewritten with every change of its shopper.
KEPT_FIELDS = (
    "id",
    "detected_at",
    "event_time",
    "from_intent",
    "to_intent",
    "evidence",
    "suggestions",
    "holdout",
    "personalization_allowed",
)


class LatestChanges:
    def __init__(self, store: KeyValueStore, max_changes: int = MAX_CHANGES) -> None:
        self.store = store
        self.max_changes = max_changes

    def record(self, change: dict[str, Any], partition: int) -> None:
        """Keep `change` (an IntentChanged with its suggestions and holdout flag), read from `partition`."""
        shopper = change["shopper_id"]
        line = orjson.dumps({name: change.get(name) for name in KEPT_FIELDS})
        raw = self.store.get(shopper)
        lines = [] if raw is None else raw.split(b"\n")[1:]
        same = [number for number, kept in enumerate(lines) if orjson.loads(kept)["id"] == change["id"]]
        if same:
            lines[same[0]] = line
        else:
            lines = [*lines, line][-self.max_changes :]
        newest = max(parse_time(change["detected_at"]), _header(raw)["newest"] if raw is not None else 0.0)
        header = orjson.dumps({"partition": partition, "newest": newest})
        self.store.put(shopper, b"\n".join([header, *lines]), partition)

    def changes(self, shopper_id: str) -> list[dict[str, Any]]:
        """The shopper's kept changes, oldest first."""
        raw = self.store.get(shopper_id)
        return [] if raw is None else [orjson.loads(line) for line in raw.split(b"\n")[1:]]

    def erase(self, shopper_id: str) -> int:
        """Forget the shopper's changes; 1 if there was an entry, else 0."""
        raw = self.store.get(shopper_id)
        if raw is None:
            return 0
        self.store.delete(shopper_id, _header(raw)["partition"])
        return 1

    def expire(self, now: float, retention_seconds: float, max_shoppers: int) -> tuple[int, int]:
        """Remove the entries whose newest change was detected more than `retention_seconds` before
        `now`, then, past `max_shoppers`, those changed least recently; how many of each."""
        kept: list[tuple[float, str, int]] = []
        expired = 0
        for shopper, raw in self.store.items():
            header = _header(raw)
            if header["newest"] < now - retention_seconds:
                self.store.delete(shopper, header["partition"])
                expired += 1
            else:
                kept.append((header["newest"], shopper, header["partition"]))
        excess = max(0, len(kept) - max_shoppers)
        for _, shopper, partition in heapq.nsmallest(excess, kept):
            self.store.delete(shopper, partition)
        return expired, excess


def _header(raw: bytes) -> dict[str, Any]:
    end = raw.find(b"\n")
    return orjson.loads(raw if end < 0 else raw[:end])
