"""The delivery path: IntentChanged records -> consent, holdout and frequency cap -> the matching
subscriptions -> pending webhook deliveries, attempted by `intent.webhooks.delivery.Deliverer`.
Every change it reads (unless its shopper was erased since) is also kept for the read API, delivered
or not (`intent.read.latest`).

It reads the changes topic, keyed by shopper and partitioned as the input, so the worker that owns
a shopper's windows also owns its caps and pending deliveries: a rebalance moves them together.
The changes topic is this path's input, and the same guarantee holds as on the detection path: a
change's offset is committed only once its pending deliveries, cap entry and kept copy are acknowledged
(`handle_batch` flushes them, inside `committed_when_done`). Otherwise a worker that died after the
commit would leave a change that no worker ever delivers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Container
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson
from faust.types import EventT

from intent import observability as metrics
from intent.policy import DeliveryPolicy
from intent.read.latest import LatestChanges
from intent.settings import Settings
from intent.stores import KeyValueStore
from intent.stream.detection import RecordSink
from intent.webhooks.delivery import Attempt, Deliverer, PayloadTooLarge, parse_schedule
from intent.webhooks.subscriptions import Subscription, SubscriptionLog

log = logging.getLogger(__name__)

ENQUEUED = "enqueued"
NO_SUBSCRIPTION = "no_subscription"
SHOPPER_ERASED = "shopper_erased"


class DeliveryPath:
    """Decides, per intent change, whether and to whom it is delivered, and hands it to the deliverer."""

    def __init__(
        self,
        settings: Settings,
        subscriptions: SubscriptionLog,
        policy: DeliveryPolicy,
        pending: KeyValueStore,
        caps: KeyValueStore,
        latest_changes: LatestChanges,
        webhook_dead_letters: RecordSink,
        owned_partitions: Callable[[], Container[int]],
        erased_after: Callable[[str, float], bool],
        flush: Callable[[], Awaitable[None]],
        on_attempt: Callable[[Subscription, str, dict[str, Any], Attempt], None] | None = None,
    ) -> None:
        """`erased_after(shopper, t)`: whether the shopper was erased after time `t` (`ShopperErasure`);
        `flush()`: returns once the writes to `pending`, `caps` and `latest_changes` are acknowledged,
        or raises; `on_attempt`: hears of every webhook attempt (`Deliverer`'s)."""
        self.subscriptions = subscriptions
        self._flush = flush
        self.policy = policy
        self.caps = caps
        self.latest_changes = latest_changes
        self._webhook_dead_letters = webhook_dead_letters
        self._erased_after = erased_after
        self.deliverer = Deliverer(
            subscriptions.registry,
            pending,
            schedule=parse_schedule(settings.webhook_retry_schedule),
            timeout_seconds=settings.webhook_timeout_seconds,
            endpoint_concurrency=settings.webhook_endpoint_concurrency,
            allow_private_urls=settings.webhook_allow_private_urls,
            dead_letter=self._dead_letter,
            disable=self._disable,
            owned_partitions=owned_partitions,  # after a rebalance, the new owner retries
            on_attempt=on_attempt,
        )

    async def handle_batch(self, batch: list[EventT]) -> None:
        """Handle each change of `batch`; return once what they stored is acknowledged, or raise."""
        for event in batch:
            self.handle(orjson.loads(event.value), event.message.partition)
        await self._flush()

    def handle(self, change: dict[str, Any], partition: int) -> str:
        """Deliver `change`, read from `partition`, to its subscriptions; what became of it: `ENQUEUED`,
        `NO_SUBSCRIPTION`, `SHOPPER_ERASED` or the policy's reason for not delivering."""
        shopper = change["shopper_id"]
        if self._erased_after(shopper, datetime.fromisoformat(change["detected_at"]).timestamp()):
            metrics.DELIVERIES_SUPPRESSED.labels(SHOPPER_ERASED).inc()
            return SHOPPER_ERASED  # detected before the shopper was erased: nothing of it is kept or sent
        self.latest_changes.record(change, partition)  # the read API shows it as its consent allows then
        # the cap counts in event time, so a replay of last week is capped like last week was
        event_time = datetime.fromisoformat(change["event_time"]).timestamp()
        decision = self.policy.decide(change, self.caps, event_time, partition)
        if not decision.deliver:
            assert decision.reason is not None
            log.info(
                "intent change %s not delivered: %s",
                change["id"],
                decision.reason,
                extra={"ids": {"change_id": change["id"], "shopper_id": shopper}},
            )
            return decision.reason
        matching = self.subscriptions.registry.matching(change["to_intent"]["id"])
        if not matching:
            return NO_SUBSCRIPTION
        try:
            self.deliverer.enqueue(change, matching, partition)
        except PayloadTooLarge as error:  # cannot happen for our own payloads (trimmed)
            log.error("intent change %s not delivered: %s", change["id"], error)
            return "payload_too_large"
        return ENQUEUED

    async def _dead_letter(self, record: dict[str, Any]) -> None:
        # returns once the broker has it: only then does the deliverer forget the pending delivery
        topic = self._webhook_dead_letters
        await (await topic.send(key=record["subscription_id"].encode(), value=orjson.dumps(record)))
        metrics.DEAD_LETTERS.labels(topic.get_topic_name()).inc()

    async def _disable(self, subscription: Subscription, reason: str) -> None:
        await self.subscriptions.put(replace(subscription, disabled_reason=reason))
        log.warning(
            "disabled subscription %s: %s", subscription.id, reason, extra={"ids": {"subscription_id": subscription.id}}
        )
