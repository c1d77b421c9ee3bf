"""Whether and how an intent change reaches subscribers: consent, frequency cap, holdout.

- Not creepy: an intent flagged `sensitive` (health, baby, ...) is delivered only when the shopper's
  latest explicit consent allows personalization (the change's `personalization_allowed`: the
  event's choice, or the one the shopper's window remembers when the event says nothing); any
  intent is suppressed when consent is refused.
- A frequency cap limits deliveries per shopper per period, counting each intent change (by id)
  once, so a change emitted again after a restart is not counted twice. Its state is one small
  value per shopper (the worker's `delivery-caps` table): the ids and event times of the changes
  delivered in the last period. `expire_caps` removes the entries whose period has passed and,
  past `cap_max_shoppers`, the least recently delivered ones.
- A deterministic holdout share of shoppers is delivered with `holdout: true` and no suggestions,
  so the platform can measure uplift against them.
Suppressions are counted by reason (`intent_deliveries_suppressed_total`).
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass
from typing import Any

import orjson

from intent import observability as metrics
from intent.stores import KeyValueStore

MAX_PAYLOAD_BYTES = 20 * 1024


def may_show(sensitive: bool, consent: bool | None) -> bool:
    """Whether an intent may be told about (a webhook, the read API) given the shopper's latest
    explicit personalization choice (None: never stated): none when she refused, a sensitive one
    only when she allowed it."""
    return consent is not False and (consent is True or not sensitive)


@dataclass(frozen=True)
class Decision:
    deliver: bool
    reason: str | None = None  # why not, when not


@dataclass
class CapEntry:
    """One shopper's frequency-cap state: the changes delivered in the last period, and the input
    partition whose changelog partition the entry belongs to (where its tombstone goes)."""

    partition: int
    sent: list[tuple[str, float]]  # (change id, event time), oldest first

    @property
    def latest(self) -> float:
        return self.sent[-1][1]

    def to_bytes(self) -> bytes:
        return orjson.dumps({"partition": self.partition, "sent": self.sent})

    @classmethod
    def from_bytes(cls, raw: bytes) -> CapEntry:
        data = orjson.loads(raw)
        return cls(data["partition"], [(change_id, at) for change_id, at in data["sent"]])


@dataclass(frozen=True)
class DeliveryPolicy:
    holdout_share: float
    holdout_salt: str
    cap_count: int
    cap_seconds: float
    cap_max_shoppers: int

    def in_holdout(self, shopper_id: str) -> bool:
        digest = hashlib.sha256(f"{self.holdout_salt}|{shopper_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.holdout_share

    def decide(self, change: dict[str, Any], caps: KeyValueStore, now: float, partition: int) -> Decision:
        """Whether to deliver `change` (read from `partition`) at event time `now`; a delivery is
        recorded in `caps`."""
        consent = change.get("personalization_allowed")
        if not may_show(bool(change["to_intent"].get("sensitive")), consent):
            return self._suppress("consent_refused" if consent is False else "sensitive_without_consent")
        shopper = change["shopper_id"]
        raw = caps.get(shopper)
        entry = CapEntry.from_bytes(raw) if raw is not None else CapEntry(partition, [])
        if any(change_id == change["id"] for change_id, _ in entry.sent):
            return Decision(True)  # emitted again (a redone batch): delivered before, counted once
        entry.sent = [(change_id, at) for change_id, at in entry.sent if at > now - self.cap_seconds]
        if len(entry.sent) >= self.cap_count:
            return self._suppress("frequency_cap")
        entry.sent.append((change["id"], now))
        entry.partition = partition
        caps.put(shopper, entry.to_bytes(), partition)
        return Decision(True)

    def expire_caps(self, caps: KeyValueStore, now: float) -> tuple[int, int]:
        """Remove the cap entries whose period has passed, then, past `cap_max_shoppers`, the least
        recently delivered ones; returns how many of each.

        An entry's period is judged by its partition's event clock (the latest delivery recorded in
        that partition), so a replay of last week is capped like last week was, never later than
        `now` (wall-clock time), so a change dated in the future cannot expire the other entries."""
        entries = [(key, CapEntry.from_bytes(raw)) for key, raw in caps.items()]
        clocks: dict[int, float] = {}
        for _, entry in entries:
            clocks[entry.partition] = max(clocks.get(entry.partition, entry.latest), entry.latest)
        kept = []
        for key, entry in entries:
            if entry.latest <= min(now, clocks[entry.partition]) - self.cap_seconds:
                caps.delete(key, entry.partition)
            else:
                kept.append((key, entry))
        # an evicted shopper may be told once more within the period: the bound is on memory
        excess = max(0, len(kept) - self.cap_max_shoppers)
        for key, entry in heapq.nsmallest(excess, kept, key=lambda item: item[1].latest):
            caps.delete(key, entry.partition)
        expired = len(entries) - len(kept)
        metrics.FREQUENCY_CAPS_REMOVED.labels("expired").inc(expired)
        metrics.FREQUENCY_CAPS_REMOVED.labels("evicted").inc(excess)
        return expired, excess

    @staticmethod
    def _suppress(reason: str) -> Decision:
        metrics.DELIVERIES_SUPPRESSED.labels(reason).inc()
        return Decision(False, reason)


def webhook_payload(change: dict[str, Any], suggestions: list[dict[str, Any]], holdout: bool) -> dict[str, Any]:
    """The IntentChanged fields plus `holdout` and `suggestions`, kept under 20 KB: evidence and then
    suggestions are shortened, oldest and lowest-ranked first, until it fits."""
    payload = {**change, "holdout": holdout, "suggestions": [] if holdout else list(suggestions)}
    while len(orjson.dumps(payload)) > MAX_PAYLOAD_BYTES:
        if len(payload["evidence"]) > 1:
            payload["evidence"] = payload["evidence"][1:]
        elif payload["suggestions"]:
            payload["suggestions"] = payload["suggestions"][:-1]
        else:
            raise ValueError("an intent change without evidence or suggestions is over 20 KB")
    return payload
