"""The collector: Segment's HTTP Tracking API in front of the events topic.

Platforms send events the way they already do: `POST /v1/track`, `/v1/page`, `/v1/identify` and
`/v1/batch` (what Segment's own libraries call), with the write key as the HTTP basic-auth user name
or as `writeKey` in the body, checked against `INTENT_WRITE_KEYS`. Each message is validated with the
worker's own parser; the good ones are produced to the events topic keyed by shopper, and the reply
is sent only once the broker has acknowledged them, so an accepted event is never lost.

Answers (JSON):
- 200 `{"success": true, "accepted": n, "duplicates": d, "rejected": [{"index", "messageId", "reason"}]}`
  when at least one message of the call was accepted or was a duplicate; a batch with one bad
  message keeps the good ones, and `rejected` says which and why;
- 400 `{"code": "invalid_request", "message": <first reason>, "rejected": [...]}` when none was;
- 401 without a valid write key; 413 over the size limits (Segment's: 32 KB a message, 500 KB a call).
Messages are de-duplicated on `messageId` within `INTENT_COLLECTOR_DEDUP_SECONDS`.

`identify` links an `anonymousId` to a `userId`: the link is written to a compacted topic
(`INTENT_IDENTITIES_TOPIC`) that every collector follows, and later events that carry only that
`anonymousId` are sent with the `userId` filled in and keyed by it, so the shopper's window follows
them after login. `page` becomes a `Page Viewed` event (kept as "other" by the model).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import time
from collections import OrderedDict
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer

from intent import observability as metrics
from intent.events import InvalidEvent, event_from_dict
from intent.kafka import CompactedTopic, ensure_topics, producer
from intent.observability import add_health_routes
from intent.settings import Settings

KINDS = {"track", "page", "identify", "screen"}


class DuplicateFilter:
    """`messageId`s seen within the last `seconds`, at most `max_ids` of them."""

    def __init__(self, seconds: float, max_ids: int) -> None:
        self.seconds = seconds
        self.max_ids = max_ids
        self._seen: OrderedDict[str, float] = OrderedDict()

    def seen(self, message_id: str, now: float) -> bool:
        while self._seen and (len(self._seen) > self.max_ids or next(iter(self._seen.values())) < now - self.seconds):
            self._seen.popitem(last=False)
        if message_id in self._seen:
            return True
        self._seen[message_id] = now
        return False

    def forget(self, message_id: str) -> None:
        """A message that was not produced after all may be sent again."""
        self._seen.pop(message_id, None)


class Collector:
    def __init__(self, settings: Settings, producer_: AIOKafkaProducer) -> None:
        self.settings = settings
        self.producer = producer_
        self.write_keys = tuple(k.strip() for k in settings.write_keys.split(",") if k.strip())
        self.duplicates = DuplicateFilter(settings.collector_dedup_seconds, settings.collector_dedup_max_ids)
        self.identities: dict[str, str] = {}
        self.identity_topic = CompactedTopic(settings.bootstrap_servers, settings.identities_topic, self._link)

    def _link(self, anonymous_id: str, user_id: bytes | None) -> None:
        if user_id is None:
            self.identities.pop(anonymous_id, None)
        else:
            self.identities[anonymous_id] = user_id.decode()

    def authorised(self, request: web.Request, body: dict[str, Any] | None) -> bool:
        offered = []
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("basic "):
            with contextlib.suppress(ValueError, UnicodeDecodeError):  # a malformed header offers nothing
                offered.append(base64.b64decode(header[6:]).decode().split(":", 1)[0])
        if body is not None and isinstance(body.get("writeKey"), str):
            offered.append(body["writeKey"])
        return any(hmac.compare_digest(key.encode(), known.encode()) for key in offered for known in self.write_keys)

    async def handle(self, request: web.Request, kind: str) -> web.Response:
        raw = await request.content.read(self.settings.collector_max_batch_bytes + 1)
        if len(raw) > self.settings.collector_max_batch_bytes:
            return _answer(
                413,
                {
                    "code": "too_large",
                    "message": f"a call is limited to {self.settings.collector_max_batch_bytes} bytes",
                },
            )
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not self.authorised(request, body if isinstance(body, dict) else None):
            return _answer(
                401, {"code": "unauthorized", "message": "a valid write key is required (basic auth user or writeKey)"}
            )
        if not isinstance(body, dict):
            return _answer(400, {"code": "invalid_request", "message": "the body must be a JSON object"})
        if kind == "batch":
            messages = body.get("batch")
            if not isinstance(messages, list):
                return _answer(400, {"code": "invalid_request", "message": "batch: expected a list of messages"})
        else:
            messages = [{**body, "type": body.get("type", kind)}]
        return await self.accept(messages)

    async def accept(self, messages: list[Any]) -> web.Response:
        now = time.time()
        rejected: list[dict[str, Any]] = []
        sends = []
        duplicates = linked = 0
        for index, message in enumerate(messages):
            reason, message_id = self._check(message)
            if reason is None and message_id is not None and self.duplicates.seen(message_id, now):
                duplicates += 1
                continue
            if reason is None:
                try:
                    send = await self._send(message)
                    if send is None:
                        linked += 1
                    else:
                        sends.append((message_id, send))
                except InvalidEvent as error:
                    reason = error.reason
                    if message_id:
                        self.duplicates.forget(message_id)
            if reason is not None:
                rejected.append({"index": index, "messageId": message_id, "reason": reason})
        # Acknowledged by the broker before we answer: an accepted event is never lost.
        results = await asyncio.gather(*(send for _, send in sends), return_exceptions=True)
        accepted = 0
        for (message_id, _), result in zip(sends, results, strict=True):
            if isinstance(result, BaseException):
                if message_id:
                    self.duplicates.forget(message_id)
                return _answer(503, {"code": "unavailable", "message": f"the broker did not take the events: {result}"})
            accepted += 1
        metrics.COLLECTOR_MESSAGES.labels("accepted").inc(accepted)
        metrics.COLLECTOR_MESSAGES.labels("rejected").inc(len(rejected))
        metrics.COLLECTOR_MESSAGES.labels("duplicate").inc(duplicates)
        accepted += linked
        if not accepted and not duplicates and rejected:
            return _answer(400, {"code": "invalid_request", "message": rejected[0]["reason"], "rejected": rejected})
        return _answer(200, {"success": True, "accepted": accepted, "duplicates": duplicates, "rejected": rejected})

    def _check(self, message: Any) -> tuple[str | None, str | None]:
        if not isinstance(message, dict):
            return "a message is a JSON object", None
        message_id = message.get("messageId") if isinstance(message.get("messageId"), str) else None
        if len(orjson.dumps(message)) > self.settings.collector_max_message_bytes:
            return f"a message is limited to {self.settings.collector_max_message_bytes} bytes", message_id
        kind = message.get("type", "track")
        if not isinstance(kind, str) or kind not in KINDS:
            return f"type: {kind!r} is not one of {sorted(KINDS)}", message_id
        return None, message_id

    async def _send(self, message: dict[str, Any]) -> asyncio.Future[Any] | None:
        """Validate and start producing one message (None: nothing to produce); raises
        `InvalidEvent` with the reason."""
        kind = message.get("type", "track")
        if kind == "identify":
            anonymous, user = message.get("anonymousId"), message.get("userId")
            if not isinstance(user, str) or not user:
                raise InvalidEvent("userId: identify needs the user it identifies")
            if isinstance(anonymous, str) and anonymous and self.identities.get(anonymous) != user:
                await self.identity_topic.write(anonymous, user.encode())
            return None  # a link, not a shopping event: the events that follow carry the user
        if kind in ("page", "screen"):
            # kept as a track call the worker reads as "other": a visit without a product
            message = {**message, "type": "track", "event": "Page Viewed" if kind == "page" else "Screen Viewed"}
        anonymous = message.get("anonymousId")
        if not message.get("userId") and isinstance(anonymous, str) and anonymous in self.identities:
            message = {**message, "userId": self.identities[anonymous]}
        event = event_from_dict(message)  # the worker's own validation, with its precise reasons
        return await self.producer.send(
            self.settings.events_topic, orjson.dumps(message), key=event.shopper_id.encode()
        )


def _answer(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda v: orjson.dumps(v).decode())


def create_collector_app(settings: Settings, producer_: AIOKafkaProducer) -> tuple[web.Application, Collector]:
    collector = Collector(settings, producer_)
    app = web.Application(client_max_size=settings.collector_max_batch_bytes + 1024)
    for path, kind in (
        ("track", "track"),
        ("page", "page"),
        ("identify", "identify"),
        ("screen", "screen"),
        ("batch", "batch"),
        ("t", "track"),
        ("p", "page"),
        ("i", "identify"),  # the short paths some libraries use
    ):
        app.router.add_post(f"/v1/{path}", _route(collector, kind))
    add_health_routes(app, lambda: {"broker_connected": collector.identity_topic.started})

    async def lifecycle(_: web.Application) -> Any:
        await collector.identity_topic.start()
        yield
        await collector.identity_topic.stop()

    app.cleanup_ctx.append(lifecycle)
    return app, collector


def _route(collector: Collector, kind: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return await collector.handle(request, kind)

    return handler


async def serve(settings: Settings) -> None:
    """Run the collector until cancelled."""
    await ensure_topics(settings.bootstrap_servers, [settings.events_topic], settings.topic_partitions)
    client = producer(settings.bootstrap_servers)
    await client.start()
    app, _ = create_collector_app(settings, client)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.collector_host, settings.collector_port).start()
    print(f"collector listening on http://{settings.collector_host}:{settings.collector_port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await client.stop()
