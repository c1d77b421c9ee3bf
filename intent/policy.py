"""Whether and how an intent change reaches subscribers: consent, frequency cap, holdout.

- Not creepy: an intent flagged `sensitive` (health, baby, ...) is delivered only when the event's
  consent explicitly allows personalization; any intent is suppressed when consent is refused.
- A frequency cap limits deliveries per shopper per period; its state is one small value per
  shopper (a Faust table in the worker).
- A deterministic holdout share of shoppers is delivered with `holdout: true` and no suggestions,
  so the platform can measure uplift against them.
Suppressions are counted by reason (`intent_deliveries_suppressed_total`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from intent import observability as metrics

MAX_PAYLOAD_BYTES = 20 * 1024


@dataclass(frozen=True)
class Decision:
    deliver: bool
    reason: str | None = None  # why not, when not
    cap_state: bytes | None = None  # the shopper's frequency-cap state after this decision


@dataclass(frozen=True)
class DeliveryPolicy:
    holdout_share: float
    holdout_salt: str
    cap_count: int
    cap_seconds: float

    def in_holdout(self, shopper_id: str) -> bool:
        digest = hashlib.sha256(f"{self.holdout_salt}|{shopper_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.holdout_share

    def decide(self, change: dict[str, Any], cap_state: bytes | None, now: float) -> Decision:
        consent = change.get("personalization_allowed")
        if consent is False:
            return self._suppress("consent_refused")
        if change["to_intent"].get("sensitive") and consent is not True:
            return self._suppress("sensitive_without_consent")
        sent = [t for t in (orjson.loads(cap_state) if cap_state else []) if t > now - self.cap_seconds]
        if len(sent) >= self.cap_count:
            return self._suppress("frequency_cap")
        return Decision(True, cap_state=orjson.dumps([*sent, now]))

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
