"""Subscriptions, event-sourced: a compacted topic holds each subscription's latest state.

Every worker follows the whole topic (one partition, no consumer group) into an in-memory
registry, so all workers deliver to the same set and a restart rebuilds it. An API write returns
once this process has read its own write back, so a GET right after a POST sees it.

The topic holds the signing secrets: restrict who can read it as you would a secrets store.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

from intent.events import iso_time
from intent.kafka import CompactedTopic
from intent.webhooks.signing import new_secret

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SigningSecret:
    secret: str
    expires_at: float | None = None  # an old secret still signs until then, during a rotation


@dataclass(frozen=True)
class Subscription:
    id: str
    url: str
    intents: tuple[str, ...] = ()  # empty: every intent
    description: str | None = None
    secrets: tuple[SigningSecret, ...] = ()
    created_at: float = field(default_factory=time.time)
    disabled_reason: str | None = None

    @classmethod
    def create(cls, url: str, intents: tuple[str, ...], description: str | None) -> Subscription:
        return cls(f"sub_{uuid.uuid4().hex}", url, intents, description, (SigningSecret(new_secret()),))

    @property
    def enabled(self) -> bool:
        return self.disabled_reason is None

    def wants(self, intent_id: str) -> bool:
        return self.enabled and (not self.intents or intent_id in self.intents)

    def signing_secrets(self, now: float) -> list[str]:
        return [s.secret for s in self.secrets if s.expires_at is None or s.expires_at > now]

    def rotated(self, overlap_seconds: float, now: float) -> Subscription:
        """A new current secret; the previous ones keep signing for `overlap_seconds`."""
        kept = tuple(
            SigningSecret(s.secret, now + overlap_seconds if s.expires_at is None else s.expires_at)
            for s in self.secrets
            if s.expires_at is None or s.expires_at > now
        )
        return replace(self, secrets=(SigningSecret(new_secret()), *kept))

    def public(self) -> dict[str, Any]:
        """What the API shows after creation: everything but the secrets."""
        return {
            "id": self.id,
            "url": self.url,
            "intents": list(self.intents),
            "description": self.description,
            "created_at": iso_time(self.created_at),
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
        }

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Subscription:
        data = orjson.loads(raw)
        return cls(
            **{
                **data,
                "intents": tuple(data["intents"]),
                "secrets": tuple(SigningSecret(**s) for s in data["secrets"]),
            }
        )


class SubscriptionRegistry:
    """The current subscriptions, built by applying the topic's records in order."""

    def __init__(self) -> None:
        self._subscriptions: dict[str, Subscription] = {}

    def apply(self, key: str, value: bytes | None) -> None:
        if value is None:
            self._subscriptions.pop(key, None)
        else:
            self._subscriptions[key] = Subscription.from_bytes(value)

    def get(self, subscription_id: str) -> Subscription | None:
        return self._subscriptions.get(subscription_id)

    def all(self) -> list[Subscription]:
        return sorted(self._subscriptions.values(), key=lambda s: s.created_at)

    def matching(self, intent_id: str) -> list[Subscription]:
        return [s for s in self.all() if s.wants(intent_id)]


class SubscriptionLog:
    """Writes subscription changes to the compacted topic and follows it into a registry."""

    def __init__(self, bootstrap_servers: str, topic: str, registry: SubscriptionRegistry | None = None) -> None:
        self.registry = registry or SubscriptionRegistry()
        self.topic = topic
        self._topic = CompactedTopic(bootstrap_servers, topic, self._apply)

    def _apply(self, key: str, value: bytes | None) -> None:
        try:
            self.registry.apply(key, value)
        except (ValueError, TypeError, KeyError):
            log.exception("skipping an unreadable subscription record for %s", key)

    @property
    def started(self) -> bool:
        return self._topic.started

    async def start(self) -> None:
        await self._topic.start()
        log.info("following %d subscriptions on %s", len(self.registry.all()), self.topic)

    async def stop(self) -> None:
        await self._topic.stop()

    async def put(self, subscription: Subscription) -> None:
        await self._topic.write(subscription.id, subscription.to_bytes())

    async def delete(self, subscription_id: str) -> None:
        await self._topic.write(subscription_id, None)
