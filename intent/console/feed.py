"""What the console's live view shows, for the whole deployment, not one worker's share.

Each worker's console reads the intent-changes topic, both dead-letter topics and the webhook
attempts topic itself, every partition, with a consumer of its own outside any consumer group: the
intent changes of shoppers another worker owns and the webhooks another worker sent are seen alike.
It starts `INTENT_CONSOLE_HISTORY_HOURS` back and keeps counts and the most recent items in memory.

Webhook failures come from the attempts topic: the worker that makes an attempt (the owner of the
change's partition) records its outcome there through `AttemptLog`, without the payload or the
shopper. Its dead letters (every attempt failed) come from the webhook dead-letter topic.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from intent.events import iso_time
from intent.kafka import ensure_topics
from intent.policy import may_show
from intent.webhooks.delivery import Attempt
from intent.webhooks.subscriptions import Subscription

log = logging.getLogger(__name__)

RECENT_ITEMS = 100  # of each kind, per worker's memory and per live view
OUTCOMES_PER_SUBSCRIPTION = 10
SEEN_CHANGE_IDS = 100_000  # a change emitted again (a redone batch) is counted once
EXCERPT_BYTES = 160
ATTEMPT_QUEUE = 10_000


@dataclass(frozen=True)
class FeedTopics:
    changes: str
    dead_letters: str
    webhook_dead_letters: str
    webhook_attempts: str

    def all(self) -> list[str]:
        return [self.changes, self.dead_letters, self.webhook_dead_letters, self.webhook_attempts]


def attempt_record(subscription: Subscription, webhook_id: str, payload: Mapping[str, Any], attempt: Attempt) -> bytes:
    """One webhook attempt's outcome as the attempts topic keeps it: no payload, no shopper."""
    to_intent = payload.get("to_intent")
    return orjson.dumps(
        {
            "subscription_id": subscription.id,
            "webhook_id": webhook_id,
            "type": payload.get("type"),
            "change_id": payload.get("id"),
            "intent": to_intent.get("id") if isinstance(to_intent, dict) else None,
            "at": iso_time(attempt.at),
            "seconds": round(attempt.seconds, 4),
            "status": attempt.status,
            "error": attempt.error,
        }
    )


def succeeded(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


class AttemptLog:
    """Writes each webhook attempt's outcome to the attempts topic, off the delivery path: `record`
    only queues it. An outcome that cannot be written is logged and dropped; the delivery itself
    (retries, dead letters) never depends on it."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self._queue: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue(ATTEMPT_QUEUE)
        self._producer: AIOKafkaProducer | None = None
        self._sender: asyncio.Task[None] | None = None
        self.dropped = 0

    def record(self, subscription: Subscription, webhook_id: str, payload: Mapping[str, Any], attempt: Attempt) -> None:
        record = attempt_record(subscription, webhook_id, payload, attempt)
        try:
            self._queue.put_nowait((subscription.id.encode(), record))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("%d webhook attempt outcomes not recorded for the console: its queue is full", self.dropped)

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, linger_ms=50)
        await self._producer.start()
        self._sender = asyncio.create_task(self._send_forever(), name="console webhook attempts")

    async def stop(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()

    async def _send_forever(self) -> None:
        assert self._producer is not None
        while True:
            key, value = await self._queue.get()
            try:
                await self._producer.send(self.topic, value, key=key)
            except Exception:  # whatever the client raises: an outcome for the console is not worth a stop
                log.exception("a webhook attempt outcome was not recorded for the console")


class Recent:
    """The latest items of one kind, each with the feed's sequence number when it arrived."""

    def __init__(self, size: int = RECENT_ITEMS) -> None:
        self.items: deque[dict[str, Any]] = deque(maxlen=size)

    def add(self, sequence: int, item: dict[str, Any]) -> None:
        self.items.append({**item, "seq": sequence})

    def after(self, sequence: int) -> list[dict[str, Any]]:
        return [item for item in self.items if item["seq"] > sequence]


class LiveFeed:
    """Follows the topics (see the module's docstring) and answers what the live view shows."""

    def __init__(
        self,
        bootstrap_servers: str,
        topics: FeedTopics,
        partitions: int,
        history_seconds: float,
        intent_labels: Mapping[str, str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.partitions = partitions
        self.history_seconds = history_seconds
        self.intent_labels = intent_labels
        self.clock = clock
        self.since = 0.0  # where the reading started (seconds since the epoch)
        self.sequence = 0  # one more for every item read: a live view asks for what came after its last
        self.caught_up = False
        self.by_intent: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self.changes = Recent()
        self.dead_letters = Recent()
        self.webhook_dead_letters = Recent()
        self.webhook_failures = Recent()
        self._outcomes: dict[str, deque[dict[str, Any]]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start reading; returns before the history is read (`caught_up` says when it is)."""
        await ensure_topics(self.bootstrap_servers, self.topics.all(), self.partitions)
        self.since = self.clock() - self.history_seconds
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers, group_id=None, enable_auto_commit=False
        )
        await self._consumer.start()
        self._reader = asyncio.create_task(self._read_forever(), name="console live feed")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _assign(self) -> list[TopicPartition]:
        assert self._consumer is not None
        partitions: list[TopicPartition] = []
        for topic in self.topics.all():
            numbers = self._consumer.partitions_for_topic(topic)
            while not numbers:  # topics created a moment ago: metadata catches up
                await self._consumer.topics()
                numbers = self._consumer.partitions_for_topic(topic)
                if not numbers:
                    await asyncio.sleep(0.5)
            partitions += [TopicPartition(topic, number) for number in sorted(numbers)]
        self._consumer.assign(partitions)
        # Kafka finds the first offset at or after the horizon; a broker that does not index times
        # answers the start, and `apply` skips the older records by their own time.
        starts = await self._consumer.offsets_for_times({tp: int(self.since * 1000) for tp in partitions})
        for tp in partitions:
            found = starts.get(tp)
            if found is None:
                await self._consumer.seek_to_end(tp)
            else:
                self._consumer.seek(tp, found.offset)
        return partitions

    async def _read_forever(self) -> None:
        assert self._consumer is not None
        partitions = await self._assign()
        ends = await self._consumer.end_offsets(partitions)
        while True:
            batches = await self._consumer.getmany(timeout_ms=500, max_records=2_000)
            for messages in batches.values():
                for message in messages:
                    self.apply(message)
            if not self.caught_up:
                positions = [await self._consumer.position(tp) for tp in partitions]
                self.caught_up = all(position >= ends[tp] for position, tp in zip(positions, partitions, strict=True))

    def apply(self, message: ConsumerRecord[bytes, bytes]) -> None:
        """Take one record of any of the topics into the counts and the recent items."""
        if message.timestamp is not None and message.timestamp < self.since * 1000:
            return
        try:
            record = orjson.loads(message.value) if message.value is not None else None
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            log.warning("the console skips an unreadable record of %s at offset %s", message.topic, message.offset)
            return
        try:
            if message.topic == self.topics.changes:
                self._change(record)
            elif message.topic == self.topics.dead_letters:
                self._dead_letter(record)
            elif message.topic == self.topics.webhook_dead_letters:
                self._webhook_dead_letter(record)
            else:
                self._attempt(record)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            log.warning("the console skips a record of %s at offset %s: %r", message.topic, message.offset, error)

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence

    def _label(self, intent_id: str | None) -> str | None:
        return None if intent_id is None else self.intent_labels.get(intent_id, intent_id)

    def _change(self, change: dict[str, Any]) -> None:
        to_intent = change["to_intent"]
        if change["id"] in self._seen:
            return
        self._seen[change["id"]] = None
        if len(self._seen) > SEEN_CHANGE_IDS:
            self._seen.popitem(last=False)
        self.by_intent[to_intent["id"]] += 1
        self.totals["changes"] += 1
        sequence = self._next()
        if change.get("holdout"):
            self.totals["holdout"] += 1
        if not may_show(bool(to_intent.get("sensitive")), change.get("personalization_allowed")):
            # counted, never listed: no webhook would name this shopper with this intent either
            self.totals["withheld_for_consent"] += 1
            return
        evidence = change.get("evidence") or []
        trigger = evidence[-1] if evidence else {}
        from_intent = change.get("from_intent")
        self.changes.add(
            sequence,
            {
                "id": change["id"],
                "shopper_id": change["shopper_id"],
                "scope": change.get("scope"),
                "from_intent": None
                if not from_intent
                else {"id": from_intent["id"], "label": self._label(from_intent["id"])},
                "to_intent": {
                    "id": to_intent["id"],
                    "label": self._label(to_intent["id"]),
                    "confidence": to_intent.get("confidence"),
                },
                "trigger": trigger.get("name") or trigger.get("query") or _event_and_category(trigger),
                "event_time": change.get("event_time"),
                "detected_at": change.get("detected_at"),
                "holdout": bool(change.get("holdout")),
                "suggestions": len(change.get("suggestions") or []),
            },
        )

    def _dead_letter(self, letter: dict[str, Any]) -> None:
        self.totals["dead_letters"] += 1
        original = base64.b64decode(letter.get("original_base64") or "")
        self.dead_letters.add(
            self._next(),
            {
                "reason": letter["reason"],
                "topic": letter.get("topic"),
                "partition": letter.get("partition"),
                "offset": letter.get("offset"),
                "key": letter.get("key"),
                "rejected_at": letter.get("rejected_at"),
                "bytes": len(original),
                "excerpt": original[:EXCERPT_BYTES].decode("utf-8", "replace"),
            },
        )

    def _webhook_dead_letter(self, letter: dict[str, Any]) -> None:
        self.totals["webhook_dead_letters"] += 1
        attempts = letter.get("attempts") or []
        last = attempts[-1] if attempts else {}
        payload = letter.get("payload") or {}
        self.webhook_dead_letters.add(
            self._next(),
            {
                "webhook_id": letter["webhook_id"],
                "subscription_id": letter["subscription_id"],
                "url": letter.get("url"),
                "change_id": payload.get("id"),
                "intent": self._label((payload.get("to_intent") or {}).get("id")),
                "attempts": len(attempts),
                "last_status": last.get("status"),
                "last_error": last.get("error"),
                "dead_lettered_at": letter.get("dead_lettered_at"),
            },
        )

    def _attempt(self, attempt: dict[str, Any]) -> None:
        self.totals["webhook_attempts"] += 1
        sequence = self._next()
        outcome = {
            "webhook_id": attempt["webhook_id"],
            "subscription_id": attempt["subscription_id"],
            "type": attempt.get("type"),
            "change_id": attempt.get("change_id"),
            "intent": self._label(attempt.get("intent")),
            "at": attempt.get("at"),
            "seconds": attempt.get("seconds"),
            "status": attempt.get("status"),
            "error": attempt.get("error"),
            "delivered": succeeded(attempt.get("status")),
        }
        kept = self._outcomes.setdefault(attempt["subscription_id"], deque(maxlen=OUTCOMES_PER_SUBSCRIPTION))
        kept.append(outcome)
        if not outcome["delivered"]:
            self.totals["webhook_failed_attempts"] += 1
            self.webhook_failures.add(sequence, outcome)

    def outcomes(self, subscription_id: str) -> list[dict[str, Any]]:
        """The subscription's latest attempts, newest first."""
        return list(reversed(self._outcomes.get(subscription_id, ())))

    def view(self, after: int = 0) -> dict[str, Any]:
        """Counts, and the items that arrived after sequence number `after` (0: all kept)."""
        return {
            "since": iso_time(self.since),
            "caught_up": self.caught_up,
            "seq": self.sequence,
            "totals": {
                key: self.totals[key]
                for key in (
                    "changes",
                    "withheld_for_consent",
                    "holdout",
                    "dead_letters",
                    "webhook_dead_letters",
                    "webhook_attempts",
                    "webhook_failed_attempts",
                )
            },
            "by_intent": [
                {"id": intent_id, "label": self._label(intent_id), "count": count}
                for intent_id, count in self.by_intent.most_common()
            ],
            "changes": self.changes.after(after),
            "dead_letters": self.dead_letters.after(after),
            "webhook_dead_letters": self.webhook_dead_letters.after(after),
            "webhook_failures": self.webhook_failures.after(after),
        }


def _event_and_category(evidence: Mapping[str, Any]) -> str | None:
    """What an unnamed product's event says (a purchase log's rows carry ids and categories only)."""
    category = evidence.get("category")
    return f"{evidence.get('event')} ({category})" if category else evidence.get("event")
