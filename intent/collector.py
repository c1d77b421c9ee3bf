"""The collector: Segment's HTTP Tracking API in front of the events topic, the entry of the flow.

Platforms send events the way they already do. `POST /v1/track`, `/v1/page`, `/v1/screen`,
`/v1/identify` and `/v1/batch` take Segment's JSON (the short paths `/v1/t`, `/v1/p`, `/v1/i` of
older libraries too; the official Python client posts everything to `/v1/batch`). The write key is
the HTTP basic-auth user name (empty password) or `writeKey` in the body, as Segment accepts both
(analytics-python 2.x sends only the latter); it must be one of `INTENT_WRITE_KEYS`.

Each message is validated with the worker's own parser (`intent.events.event_from_dict`), so a
message the collector accepts is one the worker can read. The accepted ones of a call are produced
to `INTENT_EVENTS_TOPIC` keyed by shopper (userId, else anonymousId) in one go, and the reply is sent
only once the broker has acknowledged every one of them: an accepted event is never lost. As Segment
does, a missing `messageId` or `timestamp` is filled in (a new id; the time the call was received).

Clocks: browsers' clocks are wrong, so the collector applies Segment's correction. Every message gets
`receivedAt` (when its call arrived, by the collector's clock). A message that says when it was sent
(`sentAt`, on the message or, for a batch, on the batch body for all its messages) has its
`timestamp` shifted by `receivedAt - sentAt`, the sender's clock error plus the time in transit; the
time it gave is kept as `originalTimestamp`. A shopper whose clock is an hour ahead is therefore
seen at the right time, not an hour in the future.

Replies (JSON; the `code`/`message` pair is what Segment's libraries log on an error):
- 200 `{"success": true, "accepted": n, "duplicates": d, "rejected": [...]}` when at least one message
  of the call was accepted or was a duplicate. A batch with bad messages keeps the good ones;
  `rejected` lists each bad one as `{"index": i, "messageId": id or null, "reason": "..."}` (`index`
  is its position in the batch, 0 for a single call);
- 400 `{"success": false, "code": "invalid_request", "message": <the first reason>, "rejected": [...]}`
  when none was (a body that is not a JSON object has no `rejected`);
- 429 `code: "rate_limited"` with `Retry-After` (seconds) when the write key sent more events than
  `INTENT_COLLECTOR_RATE_LIMIT_PER_SECOND` allows on average (`INTENT_COLLECTOR_RATE_LIMIT_BURST` at
  once); nothing of the call is taken, and Segment's libraries send it again later. Write keys sit
  in browser code: the limit keeps one leaked key from flooding the stream;
- 401 `code: "unauthorized"` without a valid write key; 413 `code: "too_large"` for a call over
  `INTENT_COLLECTOR_MAX_BATCH_BYTES` (a single message over `INTENT_COLLECTOR_MAX_MESSAGE_BYTES` is
  rejected with that reason, like any invalid message; Segment's limits are 32 KB and 500 KB);
- 503 `code: "unavailable"` when the broker did not acknowledge: Segment's libraries retry 5xx, and
  the messages that did reach the broker are then recognised as duplicates.
A message whose `messageId` was accepted within `INTENT_COLLECTOR_DEDUP_SECONDS` is acknowledged and
dropped (the most recent `INTENT_COLLECTOR_DEDUP_MAX_IDS` ids are remembered, by each collector
process: a retry that reaches another replica is not caught here).

Identity: `identify` links an `anonymousId` to a `userId`. The link is kept in memory (one entry
per identified visitor, the newest `INTENT_COLLECTOR_MAX_IDENTITIES`: the oldest link is forgotten
first, and counted) and written to the compacted `INTENT_IDENTITIES_TOPIC`, which every collector
follows and reads in full on start (the topic keeps every link; a forgotten visitor's events go on
as anonymous until they identify again); later events that carry only that `anonymousId` are sent with
the `userId` filled in and keyed by it, so they reach the worker as the known shopper and join that
shopper's window. The identify call itself is not forwarded: the worker reads only `track` calls (it
would dead-letter it), and the link is all it needs. `page` and `screen` calls become the `track`
events "Page Viewed" and "Screen Viewed", which the worker keeps as "other" (a visit that names no
product).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import math
import signal
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from intent import observability as metrics
from intent.events import InvalidEvent, event_from_dict, iso_time, parse_time
from intent.kafka import CompactedTopic, ensure_topics, producer
from intent.observability import add_health_routes
from intent.settings import Settings

# The Segment calls the collector takes; `alias` and `group` say nothing about shopping intent.
CALL_TYPES = ("identify", "page", "screen", "track")
# A `page` or `screen` call is forwarded as a `track` event of this name.
VIEW_EVENTS = {"page": "Page Viewed", "screen": "Screen Viewed"}
# Path, and the call type a single message posted there has when it does not say.
ROUTES = {
    "track": "track",
    "t": "track",
    "page": "page",
    "p": "page",
    "screen": "screen",
    "identify": "identify",
    "i": "identify",
    "batch": "batch",
}


class DuplicateFilter:
    """The `messageId`s accepted within the last `seconds`, at most `max_ids` of them (oldest go first)."""

    def __init__(self, seconds: float, max_ids: int) -> None:
        self.seconds = seconds
        self.max_ids = max_ids
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, message_id: str, now: float) -> bool:
        """Remember `message_id`; False if it was already remembered (a duplicate)."""
        self._evict(now)
        if message_id in self._seen:
            return False
        self._seen[message_id] = now
        return True

    def forget(self, message_id: str) -> None:
        """A message that did not reach the broker after all: its retry must not count as a duplicate."""
        self._seen.pop(message_id, None)

    def __len__(self) -> int:
        return len(self._seen)

    def _evict(self, now: float) -> None:
        # Insertion order is time order (a monotonic clock), so expired ids are at the front.
        while self._seen and (len(self._seen) >= self.max_ids or next(iter(self._seen.values())) <= now - self.seconds):
            self._seen.popitem(last=False)


class RateLimit:
    """A token bucket per write key: `rate` events a second on average, `burst` at once; rate 0: no limit.

    Events are counted, not calls: a batch of 100 costs 100. A call larger than the burst costs the
    burst, or it could never pass. The keys are the configured write keys, so the buckets are few.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # write key -> (tokens, when counted)

    def take(self, key: str, events: int, now: float) -> float:
        """Take `events` tokens: 0 if they were there, else the seconds until they will be (none taken)."""
        if self.rate <= 0:
            return 0.0
        cost = min(events, self.burst)
        tokens, counted_at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - counted_at) * self.rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (cost - tokens) / self.rate


@dataclass
class CallOutcome:
    """What becomes of the messages of one call."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    to_produce: list[Record] = field(default_factory=list)

    def reject(self, index: int, message_id: str | None, reason: str) -> None:
        self.rejected.append({"index": index, "messageId": message_id, "reason": reason})


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record to produce for an accepted message."""

    message_id: str
    topic: str
    key: bytes
    value: bytes
    partition: int | None = None


class Collector:
    """Validates Segment calls, fills in known users, de-duplicates, and produces to the events topic."""

    def __init__(self, settings: Settings, events_producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.producer = events_producer
        self.write_keys = tuple(key.strip() for key in settings.write_keys.split(",") if key.strip())
        self.duplicates = DuplicateFilter(settings.collector_dedup_seconds, settings.collector_dedup_max_ids)
        self.rate_limit = RateLimit(settings.collector_rate_limit_per_second, settings.collector_rate_limit_burst)
        self.identities: OrderedDict[str, str] = OrderedDict()  # anonymousId -> userId, oldest link first
        self.identity_topic = CompactedTopic(settings.bootstrap_servers, settings.identities_topic, self._apply_link)

    async def start(self) -> None:
        """Read every identity link before the first call is taken."""
        await self.identity_topic.start()

    async def stop(self) -> None:
        await self.identity_topic.stop()

    def _apply_link(self, anonymous_id: str, user_id: bytes | None) -> None:
        if user_id is None:
            self.identities.pop(anonymous_id, None)
        else:
            self._remember_link(anonymous_id, user_id.decode())

    def _remember_link(self, anonymous_id: str, user_id: str) -> None:
        """Keep the link, newest last; beyond `collector_max_identities`, forget the oldest ones."""
        self.identities[anonymous_id] = user_id
        self.identities.move_to_end(anonymous_id)
        while len(self.identities) > self.settings.collector_max_identities:
            self.identities.popitem(last=False)
            metrics.COLLECTOR_IDENTITIES_EVICTED.inc()

    def authorised(self, request: web.Request, body: Any) -> str | None:
        """The known write key the call offers, if any."""
        offered = []
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):  # a malformed header offers no key
                offered.append(base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[0])
        if isinstance(body, dict) and isinstance(body.get("writeKey"), str):
            offered.append(body["writeKey"])
        # every comparison is made, in constant time, so the reply time says nothing about the keys
        matches = [
            known for key in offered for known in self.write_keys if hmac.compare_digest(key.encode(), known.encode())
        ]
        return matches[0] if matches else None

    async def handle(self, request: web.Request, path: str) -> web.Response:
        try:
            raw = await request.read()  # bounded by the application's client_max_size
        except web.HTTPRequestEntityTooLarge:
            limit = self.settings.collector_max_batch_bytes
            return _answer(
                413, {"success": False, "code": "too_large", "message": f"a call is limited to {limit} bytes"}
            )
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            body = error
        write_key = self.authorised(request, body)
        if write_key is None:
            message = "a valid write key is required (basic-auth user or writeKey)"
            return _answer(401, {"success": False, "code": "unauthorized", "message": message})
        if isinstance(body, orjson.JSONDecodeError):
            return _invalid(f"not valid JSON: {body}")
        if not isinstance(body, dict):
            return _invalid("the body must be a JSON object")
        call_type = ROUTES[path]
        if call_type == "batch":
            messages = body.get("batch")
            if not isinstance(messages, list):
                return _invalid("batch: expected a list of messages")
            if limited := self._rate_limited(write_key, len(messages)):
                return limited
            return await self.accept(messages, sent_at=body.get("sentAt"))
        if limited := self._rate_limited(write_key, 1):
            return limited
        body.pop("writeKey", None)  # a credential, not part of the event
        return await self.accept([{**body, "type": body.get("type", call_type)}], sizes=[len(raw)])

    def _rate_limited(self, write_key: str, events: int) -> web.Response | None:
        """The 429 answer if `write_key` may not send `events` more events now."""
        wait = self.rate_limit.take(write_key, events, time.monotonic())
        if not wait:
            return None
        metrics.COLLECTOR_MESSAGES.labels("rate_limited").inc(events)
        retry_after = max(1, math.ceil(wait))
        message = f"this write key sent more events than its rate limit; send them again in {retry_after} s"
        return _answer(
            429,
            {"success": False, "code": "rate_limited", "message": message},
            headers={"Retry-After": str(retry_after)},
        )

    async def accept(self, messages: list[Any], sizes: list[int] | None = None, sent_at: Any = None) -> web.Response:
        """Take a call's messages: produce the valid ones, and answer once the broker has them all.

        `sizes` are the messages' sizes in bytes as received, when known (a single call's body);
        `sent_at` is a batch's `sentAt`, for the messages that do not carry their own.
        """
        received = time.time()
        now = time.monotonic()
        outcome = CallOutcome()
        for index, message in enumerate(messages):
            size = sizes[index] if sizes else None
            self._take(index, message, size, sent_at, received, now, outcome)
        failures = await self._produce(outcome)
        metrics.COLLECTOR_MESSAGES.labels("accepted").inc(outcome.accepted)
        metrics.COLLECTOR_MESSAGES.labels("rejected").inc(len(outcome.rejected))
        metrics.COLLECTOR_MESSAGES.labels("duplicate").inc(outcome.duplicates)
        if failures:
            metrics.COLLECTOR_MESSAGES.labels("unavailable").inc(failures)
            message = f"the broker did not acknowledge {failures} of the messages; send the call again"
            return _answer(503, {"success": False, "code": "unavailable", "message": message})
        if not outcome.accepted and not outcome.duplicates and outcome.rejected:
            return _invalid(outcome.rejected[0]["reason"], outcome.rejected)
        return _answer(
            200,
            {
                "success": True,
                "accepted": outcome.accepted,
                "duplicates": outcome.duplicates,
                "rejected": outcome.rejected,
            },
        )

    def _take(
        self,
        index: int,
        message: Any,
        size: int | None,
        batch_sent_at: Any,
        received: float,
        now: float,
        outcome: CallOutcome,
    ) -> None:
        """Validate one message and queue what it becomes, or say why it is rejected."""
        if not isinstance(message, dict):
            outcome.reject(index, None, "a message is a JSON object")
            return
        sent_id = message.get("messageId")
        shown_id = sent_id if isinstance(sent_id, str) else None
        limit = self.settings.collector_max_message_bytes
        try:
            size = size if size is not None else len(_written(message))
        except InvalidEvent as error:
            outcome.reject(index, shown_id, error.reason)
            return
        if size > limit:
            outcome.reject(index, shown_id, f"a message is limited to {limit} bytes")
            return
        call_type = message.get("type", "track")
        if call_type not in CALL_TYPES:
            outcome.reject(index, shown_id, f"type: {repr(call_type)[:40]} is not one of {list(CALL_TYPES)}")
            return
        # Segment fills these in on arrival; so does the collector, before the worker's validation.
        message = {**message, "receivedAt": iso_time(received)}
        if sent_id is None:
            message["messageId"] = str(uuid.uuid4())
        try:
            if message.get("timestamp") is None:
                message["timestamp"] = message["receivedAt"]
            elif (sent_at := message.get("sentAt", batch_sent_at)) is not None:
                # the sender's clock error (and the time in transit): Segment's correction
                skew = received - parse_time(sent_at, "sentAt")
                corrected = _corrected_time(parse_time(message["timestamp"]) + skew)
                message.update(sentAt=sent_at, originalTimestamp=message["timestamp"], timestamp=corrected)
            if call_type == "identify":
                message_id, record = self._link(message)
            else:
                record = self._event(message, call_type)
                message_id = record.message_id
        except InvalidEvent as error:
            outcome.reject(index, shown_id, error.reason)
            return
        if not self.duplicates.add(message_id, now):
            outcome.duplicates += 1
        elif record is None:
            outcome.accepted += 1  # taken, with nothing to send
        else:
            outcome.to_produce.append(record)

    def _event(self, message: dict[str, Any], call_type: str) -> Record:
        if call_type in VIEW_EVENTS:
            message = {**message, "type": "track", "event": VIEW_EVENTS[call_type]}
        event = event_from_dict(message)  # the worker's own validation, with its precise reasons
        user_id = event.user_id
        if user_id is None and event.anonymous_id in self.identities:
            user_id = self.identities[event.anonymous_id]
            message = {**message, "userId": user_id}
        key = user_id or event.shopper_id
        value = _written(message)
        if len(value) > self.settings.max_event_bytes:  # the worker would dead-letter it
            raise InvalidEvent(
                f"a message is limited to {self.settings.max_event_bytes} bytes with the fields the collector "
                "adds (receivedAt, the clock correction, a known userId)"
            )
        return Record(event.message_id, self.settings.events_topic, key.encode(), value)

    def _link(self, message: dict[str, Any]) -> tuple[str, Record | None]:
        """An identify call: its messageId, and the link to write to the identities topic, if any."""
        # Its ids and timestamp are read by the event parser, so a user it links is one the worker takes.
        ids = {key: message.get(key) for key in ("messageId", "userId", "anonymousId", "timestamp")}
        identified = event_from_dict({**ids, "type": "track", "event": "identify"})
        if identified.user_id is None:
            raise InvalidEvent("userId: identify needs the user it identifies")
        if identified.anonymous_id is None:
            return identified.message_id, None  # a known user's traits: nothing to link
        # Linked at once, so the next message of the same batch already follows the user.
        self._remember_link(identified.anonymous_id, identified.user_id)
        link = Record(
            identified.message_id,
            self.settings.identities_topic,
            identified.anonymous_id.encode(),
            identified.user_id.encode(),
            partition=0,  # the identities topic has one partition (see CompactedTopic)
        )
        return identified.message_id, link

    async def _produce(self, outcome: CallOutcome) -> int:
        """Produce the call's records, wait for every acknowledgement; returns how many failed."""
        deliveries: list[asyncio.Future[Any]] = []
        for record in outcome.to_produce:
            try:
                # returns once the record is in the producer's buffer (at once unless it is full)
                delivery = await self.producer.send(
                    record.topic, record.value, key=record.key, partition=record.partition
                )
            except KafkaError as error:
                delivery = asyncio.get_running_loop().create_future()
                delivery.set_exception(error)
            deliveries.append(delivery)
        results = await asyncio.gather(*deliveries, return_exceptions=True)
        failures = 0
        for record, result in zip(outcome.to_produce, results, strict=True):
            if isinstance(result, BaseException):
                # not on the broker: the client's retry must not be taken for a duplicate
                self.duplicates.forget(record.message_id)
                failures += 1
            else:
                outcome.accepted += 1
        return failures


def _written(message: dict[str, Any]) -> bytes:
    """The message as the JSON the collector sends on. JSON parsers, orjson's included, read up to
    1024 levels of nesting, but orjson writes at most 254: a message nested deeper is rejected."""
    try:
        return orjson.dumps(message)
    except orjson.JSONEncodeError:
        raise InvalidEvent("a message may nest objects and arrays at most 254 levels deep") from None


def _corrected_time(timestamp: float) -> str:
    try:
        return iso_time(timestamp)
    except (ValueError, OverflowError, OSError):  # beyond the years datetime can show
        raise InvalidEvent("sentAt: the timestamp corrected by it is out of range") from None


def _invalid(reason: str, rejected: list[dict[str, Any]] | None = None) -> web.Response:
    body: dict[str, Any] = {"success": False, "code": "invalid_request", "message": reason}
    if rejected is not None:
        body["rejected"] = rejected
    return _answer(400, body)


def _answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


COLLECTOR = web.AppKey("collector", Collector)


def create_collector_app(settings: Settings, events_producer: AIOKafkaProducer) -> web.Application:
    """The collector's routes, health checks and identity follower on an aiohttp application.

    `events_producer` must be started (and is stopped) by the caller; the application starts and
    stops the identity follower itself. The `Collector` is `app[COLLECTOR]`.
    """
    collector = Collector(settings, events_producer)
    app = web.Application(client_max_size=settings.collector_max_batch_bytes)
    app[COLLECTOR] = collector
    for path in ROUTES:
        app.router.add_post(f"/v1/{path}", _handler(collector, path))
    add_health_routes(app, lambda: {"identities_loaded": collector.identity_topic.started})

    async def identity_follower(_: web.Application) -> AsyncIterator[None]:
        await collector.start()
        yield
        await collector.stop()

    app.cleanup_ctx.append(identity_follower)
    return app


def _handler(collector: Collector, path: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return await collector.handle(request, path)

    return handler


async def run_collector(settings: Settings) -> None:
    """Serve the collector on `collector_host:collector_port` until SIGTERM, SIGINT or cancellation.

    On a stop signal it stops taking calls, lets the ones in progress get their acknowledgement,
    and flushes the producer before returning.
    """
    await ensure_topics(settings.bootstrap_servers, [settings.events_topic], settings.topic_partitions)
    events_producer = producer(settings.bootstrap_servers)
    await events_producer.start()
    runner = web.AppRunner(create_collector_app(settings, events_producer), access_log=None)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, stopping.set)
    try:
        await runner.setup()
        await web.TCPSite(runner, settings.collector_host, settings.collector_port).start()
        print(f"collector listening on http://{settings.collector_host}:{settings.collector_port}", flush=True)
        await stopping.wait()
    finally:
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(stop_signal)
        await runner.cleanup()
        await events_producer.stop()
