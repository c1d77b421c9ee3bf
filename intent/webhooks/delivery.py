"""Webhook attempts: signed POSTs, retried on the Standard Webhooks schedule, never blocking.

`enqueue` stores one pending delivery per subscription and returns at once; attempts run as tasks,
at most `endpoint_concurrency` at a time per endpoint, so a slow or dead endpoint delays only its
own deliveries. Pending deliveries live in a `KeyValueStore` (a changelogged Faust table in the
worker), with the absolute time of their next attempt, so a restarted worker resumes their schedule;
a worker attempts only the deliveries of the partitions it owns, so after a rebalance each pending
delivery has one sender.

Outcomes: 2xx ends a delivery; 410 Gone disables the subscription; 429, 502 and 504 back off
(honouring `Retry-After` when it asks for more than the schedule); anything else, a timeout or a
connection error retries on the schedule. After the last attempt the delivery is dead-lettered
with the payload, the endpoint and every attempt; the pending delivery is deleted only once the
dead letter is acknowledged, so a failed dead-letter send is tried again, never lost. Logs and dead
letters show the endpoint without its query string (`redacted_url`): it may carry a token.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Container
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from intent import observability as metrics
from intent.events import iso_time
from intent.stores import DictStore, KeyValueStore
from intent.webhooks.signing import webhook_headers
from intent.webhooks.subscriptions import Subscription, SubscriptionRegistry
from intent.webhooks.targets import PublicOnlyResolver, TargetRejected, check_target, redacted_url

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 20 * 1024
BACK_OFF_STATUSES = frozenset({429, 502, 504})
SCAN_INTERVAL_SECONDS = 0.5


class PayloadTooLarge(ValueError):
    pass


def webhook_id(change_id: str, subscription_id: str) -> str:
    """Stable per intent change and subscription: every retry carries it, so receivers de-duplicate."""
    return "msg_" + hashlib.sha256(f"{change_id}|{subscription_id}".encode()).hexdigest()[:32]


@dataclass
class Attempt:
    at: float
    seconds: float
    status: int | None = None  # the HTTP status, if the endpoint answered
    error: str | None = None  # otherwise what went wrong
    retry_after: float | None = None  # seconds a 429, 502 or 504 answer asked us to wait

    def public(self) -> dict[str, Any]:
        return {"at": iso_time(self.at), "seconds": round(self.seconds, 4), "status": self.status, "error": self.error}


@dataclass
class Delivery:
    webhook_id: str
    subscription_id: str
    url: str
    payload: dict[str, Any]
    partition: int  # of the intent-changes topic: where the pending entry's changelog goes
    next_attempt_at: float
    created_at: float
    attempts: list[Attempt] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Delivery:
        data = orjson.loads(raw)
        return cls(**{**data, "attempts": [Attempt(**a) for a in data["attempts"]]})


def parse_schedule(text: str) -> tuple[float, ...]:
    """'0,5,300' -> (0.0, 5.0, 300.0): seconds before each attempt, counted from the previous one."""
    delays = tuple(float(part) for part in text.split(",") if part.strip())
    if not delays or any(delay < 0 for delay in delays):
        raise ValueError(f"a retry schedule is a comma-separated list of seconds >= 0, got {text!r}")
    return delays


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A `Retry-After` header's wait in seconds: either form of RFC 9110 (seconds or an HTTP date)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None  # unreadable: the schedule applies


class Deliverer:
    def __init__(
        self,
        registry: SubscriptionRegistry,
        store: KeyValueStore,
        *,
        schedule: tuple[float, ...],
        timeout_seconds: float,
        endpoint_concurrency: int,
        allow_private_urls: bool,
        dead_letter: Callable[[dict[str, Any]], Awaitable[None]],
        disable: Callable[[Subscription, str], Awaitable[None]],
        owned_partitions: Callable[[], Container[int]] | None = None,
        clock: Callable[[], float] = time.time,
        dead_letter_retry_seconds: float = 10.0,
        on_attempt: Callable[[Subscription, str, dict[str, Any], Attempt], None] | None = None,
    ) -> None:
        """`on_attempt` hears of every attempt's outcome (the console records them); it must not block."""
        self.registry = registry
        self.store = store
        self.schedule = schedule
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.endpoint_concurrency = endpoint_concurrency
        self.allow_private_urls = allow_private_urls
        self._dead_letter = dead_letter
        self._disable = disable
        self._owned_partitions = owned_partitions  # None: this process sends every pending delivery
        self.clock = clock
        self.dead_letter_retry_seconds = dead_letter_retry_seconds
        self._on_attempt = on_attempt
        self._endpoints: dict[str, asyncio.Semaphore] = {}
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._scanner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # No pool-wide connection limit (aiohttp's default is 100): the per-endpoint semaphores bound
        # the connections, and a shared limit would let a few dead endpoints starve the others.
        connector = aiohttp.TCPConnector(limit=0, resolver=None if self.allow_private_urls else PublicOnlyResolver())
        self._session = aiohttp.ClientSession(timeout=self.timeout, connector=connector)
        self._scanner = asyncio.create_task(self._scan_forever(), name="webhook-retries")

    async def stop(self) -> None:
        tasks = [t for t in (self._scanner, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def enqueue(self, payload: dict[str, Any], subscriptions: list[Subscription], partition: int) -> list[str]:
        """Store a pending delivery of `payload` per subscription and start the first attempts."""
        if len(orjson.dumps(payload)) > MAX_PAYLOAD_BYTES:
            raise PayloadTooLarge(f"a webhook payload is limited to {MAX_PAYLOAD_BYTES} bytes")
        now = self.clock()
        ids = []
        for subscription in subscriptions:
            delivery = Delivery(
                webhook_id(payload["id"], subscription.id),
                subscription.id,
                subscription.url,
                payload,
                partition,
                now + self.schedule[0],
                now,
            )
            if self.store.get(delivery.webhook_id) is not None:
                continue  # a re-emitted change (same id): its delivery is already under way
            self.store.put(delivery.webhook_id, delivery.to_bytes(), partition)
            ids.append(delivery.webhook_id)
            if self.schedule[0] == 0:
                self._launch(delivery)
        return ids

    def pending(self) -> list[Delivery]:
        return [Delivery.from_bytes(raw) for _, raw in self.store.items()]

    def forget_shopper(self, shopper_id: str) -> int:
        """Delete the pending deliveries of `shopper_id`'s intent changes and stop their attempts in
        flight (an erasure); returns how many there were."""
        count = 0
        for key, raw in self.store.items():
            delivery = Delivery.from_bytes(raw)
            if delivery.payload.get("shopper_id") == shopper_id:
                self.store.delete(key, delivery.partition)
                if (task := self._in_flight.get(key)) is not None:
                    task.cancel()
                count += 1
        return count

    async def ping(self, subscription: Subscription) -> Attempt:
        """One signed `intent.ping` to the subscription, not retried: the API's test call."""
        now = self.clock()
        payload = {"type": "intent.ping", "id": f"ping_{int(now * 1000)}", "sent_at": iso_time(now)}
        return await self.send_once(subscription, webhook_id(payload["id"], subscription.id), payload)

    def _launch(self, delivery: Delivery) -> None:
        if delivery.webhook_id not in self._in_flight:
            task = asyncio.create_task(self._attempt(delivery.webhook_id), name=f"webhook {delivery.webhook_id}")
            self._in_flight[delivery.webhook_id] = task
            task.add_done_callback(lambda _: self._in_flight.pop(delivery.webhook_id, None))

    async def _scan_forever(self) -> None:
        while True:
            now = self.clock()
            owned = self._owned_partitions() if self._owned_partitions else None
            for key, raw in self.store.items():
                if key in self._in_flight:
                    continue
                delivery = Delivery.from_bytes(raw)
                # a table keeps the rows of partitions revoked by a rebalance: their new owner sends them
                if delivery.next_attempt_at <= now and (owned is None or delivery.partition in owned):
                    self._launch(delivery)
            await asyncio.sleep(SCAN_INTERVAL_SECONDS)

    async def _attempt(self, key: str) -> None:
        raw = self.store.get(key)
        if raw is None:
            return
        delivery = Delivery.from_bytes(raw)
        if len(delivery.attempts) >= len(self.schedule):
            await self._give_up(delivery)  # every attempt made; its dead letter could not be sent
            return
        semaphore = self._endpoints.setdefault(
            urlsplit(delivery.url).netloc, asyncio.Semaphore(self.endpoint_concurrency)
        )
        async with semaphore:
            if not self._owns(delivery.partition):
                return
            # looked up after the wait for a free slot: the subscription may have changed meanwhile
            subscription = self.registry.get(delivery.subscription_id)
            if subscription is None or not subscription.enabled:
                self.store.delete(key, delivery.partition)
                metrics.WEBHOOK_ATTEMPTS.labels("dropped_unsubscribed").inc()
                return
            attempt = await self.send_once(subscription, delivery.webhook_id, delivery.payload)
        if not self._owns(delivery.partition):
            return  # revoked during the attempt: the new owner retries it, with the same webhook-id
        delivery.attempts.append(attempt)
        if attempt.status is not None and 200 <= attempt.status < 300:
            self.store.delete(key, delivery.partition)
        elif attempt.status == 410:
            self.store.delete(key, delivery.partition)
            await self._disable_gone(subscription.id)
        elif len(delivery.attempts) >= len(self.schedule):
            await self._give_up(delivery)
        else:
            delay = self.schedule[len(delivery.attempts)]
            if attempt.retry_after is not None:
                delay = max(delay, attempt.retry_after)
            delivery.next_attempt_at = self.clock() + delay
            self.store.put(key, delivery.to_bytes(), delivery.partition)

    async def _give_up(self, delivery: Delivery) -> None:
        """Dead-letter the delivery, then forget it; if the dead letter is not acknowledged, keep the
        delivery (with every attempt) for a later scan to dead-letter."""
        try:
            await self._dead_letter(self._dead_letter_record(delivery))
        except Exception:  # whatever the broker client raises: the delivery must not be lost
            log.exception(
                "webhook %s: the dead letter was not sent; trying again in %s s",
                delivery.webhook_id,
                self.dead_letter_retry_seconds,
                extra={"ids": {"webhook_id": delivery.webhook_id, "subscription_id": delivery.subscription_id}},
            )
            delivery.next_attempt_at = self.clock() + self.dead_letter_retry_seconds
            self.store.put(delivery.webhook_id, delivery.to_bytes(), delivery.partition)
            return
        self.store.delete(delivery.webhook_id, delivery.partition)
        metrics.WEBHOOK_ATTEMPTS.labels("dead_lettered").inc()

    def _owns(self, partition: int) -> bool:
        return self._owned_partitions is None or partition in self._owned_partitions()

    async def _disable_gone(self, subscription_id: str) -> None:
        # The latest state, not the one the attempt started with: writing that back could undo a
        # rotation or bring back a subscription deleted meanwhile.
        latest = self.registry.get(subscription_id)
        if latest is not None and latest.enabled:
            await self._disable(latest, "the endpoint answered 410 Gone")

    async def send_once(self, subscription: Subscription, message_id: str, payload: dict[str, Any]) -> Attempt:
        """One signed attempt, whatever its outcome (retries are the caller's business)."""
        assert self._session is not None, "start() first"
        started = time.perf_counter()
        at = self.clock()
        body = orjson.dumps(payload)
        try:
            await check_target(subscription.url, self.allow_private_urls)
            headers = webhook_headers(subscription.signing_secrets(at), message_id, body, at)
            async with self._session.post(
                subscription.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                retry_after = (
                    retry_after_seconds(response.headers.get("Retry-After"), at)
                    if response.status in BACK_OFF_STATUSES
                    else None
                )
                attempt = Attempt(at, time.perf_counter() - started, status=response.status, retry_after=retry_after)
        except TargetRejected as error:
            attempt = Attempt(at, time.perf_counter() - started, error=f"target rejected: {error.reason}")
        except TimeoutError:
            attempt = Attempt(at, time.perf_counter() - started, error=f"timed out after {self.timeout.total} s")
        except aiohttp.ClientError as error:
            # some errors quote the URL (InvalidUrlClientError): never its query string
            message = str(error).replace(subscription.url, redacted_url(subscription.url))
            attempt = Attempt(at, time.perf_counter() - started, error=f"{type(error).__name__}: {message}")
        outcome = (
            "success"
            if attempt.status is not None and 200 <= attempt.status < 300
            else (f"http_{attempt.status}" if attempt.status is not None else "error")
        )
        metrics.WEBHOOK_ATTEMPTS.labels(outcome).inc()
        metrics.WEBHOOK_SECONDS.observe(attempt.seconds)
        if self._on_attempt is not None:
            self._on_attempt(subscription, message_id, payload, attempt)
        log.info(
            "webhook %s to %s: %s",
            message_id,
            redacted_url(subscription.url),
            attempt.status or attempt.error,
            extra={
                "ids": {"webhook_id": message_id, "subscription_id": subscription.id, "change_id": payload.get("id")}
            },
        )
        return attempt

    def _dead_letter_record(self, delivery: Delivery) -> dict[str, Any]:
        return {
            "webhook_id": delivery.webhook_id,
            "subscription_id": delivery.subscription_id,
            "url": redacted_url(delivery.url),  # the subscription has the whole URL
            "payload": delivery.payload,
            "attempts": [attempt.public() for attempt in delivery.attempts],
            "first_attempt_at": iso_time(delivery.created_at),
            "dead_lettered_at": iso_time(self.clock()),
        }


@dataclass
class ReplayReport:
    delivered: int = 0
    failed: int = 0
    skipped: int = 0  # the subscription is gone or disabled
    already_replayed: int = 0  # delivered by an earlier replay: not sent again


def replayed_topic(dead_letter_topic: str) -> str:
    """The compacted topic where `intent webhooks replay` marks each dead letter it delivered."""
    return f"{dead_letter_topic}-replayed"


async def replay_dead_letters(
    bootstrap_servers: str,
    dead_letter_topic: str,
    subscriptions_topic: str,
    *,
    subscription_id: str | None,
    timeout_seconds: float,
    allow_private_urls: bool,
    include_replayed: bool = False,
) -> ReplayReport:
    """Send the dead-lettered deliveries (of one subscription, if given) once more, with their original
    webhook-id so receivers that got one meanwhile recognise it.

    Each one delivered is marked, by webhook-id, on a compacted topic (`replayed_topic`), so the next
    run skips it (`include_replayed` sends those again too); failures stay to be tried next time. A
    marker rather than the group's committed offsets: an offset cannot pass over a failure or another
    subscription's letters (`subscription_id`) without forgetting them, and a letter dead-lettered
    twice (a worker stopped between the dead letter and forgetting its delivery) is sent once.
    Markers of letters the dead-letter topic's retention has removed are deleted."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from intent.kafka import CompactedTopic
    from intent.webhooks.subscriptions import SubscriptionLog

    subscriptions = SubscriptionLog(bootstrap_servers, subscriptions_topic)
    await subscriptions.start()
    replayed: set[str] = set()

    def remember(webhook_id: str, marker: bytes | None) -> None:
        if marker is None:
            replayed.discard(webhook_id)
        else:
            replayed.add(webhook_id)

    markers = CompactedTopic(bootstrap_servers, replayed_topic(dead_letter_topic), remember)
    await markers.start()
    marked_before = set(replayed)  # each for a letter written before this run began

    async def nothing(*_: object) -> None: ...

    deliverer = Deliverer(
        subscriptions.registry,
        DictStore(),
        schedule=(0.0,),
        timeout_seconds=timeout_seconds,
        endpoint_concurrency=1,
        allow_private_urls=allow_private_urls,
        dead_letter=nothing,
        disable=nothing,
    )
    await deliverer.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    report = ReplayReport()
    letters: set[str] = set()
    try:
        partitions = [
            TopicPartition(dead_letter_topic, p) for p in consumer.partitions_for_topic(dead_letter_topic) or ()
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in partitions])

        while await behind():
            for messages in (await consumer.getmany(timeout_ms=1000)).values():
                for message in messages:
                    record = orjson.loads(message.value)
                    letters.add(record["webhook_id"])
                    if subscription_id is not None and record["subscription_id"] != subscription_id:
                        continue
                    if record["webhook_id"] in replayed and not include_replayed:
                        report.already_replayed += 1
                        continue
                    subscription = subscriptions.registry.get(record["subscription_id"])
                    if subscription is None or not subscription.enabled:
                        report.skipped += 1
                        continue
                    attempt = await deliverer.send_once(subscription, record["webhook_id"], record["payload"])
                    if attempt.status is not None and 200 <= attempt.status < 300:
                        report.delivered += 1
                        marker = {"subscription_id": subscription.id, "replayed_at": iso_time(attempt.at)}
                        await markers.write(record["webhook_id"], orjson.dumps(marker))
                    else:
                        report.failed += 1
        for webhook_id in marked_before - letters:  # its letter is gone: it cannot be replayed again
            await markers.write(webhook_id, None)
    finally:
        await consumer.stop()
        await deliverer.stop()
        await markers.stop()
        await subscriptions.stop()
    return report
