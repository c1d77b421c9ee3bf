"""Webhook delivery against real HTTP receivers on localhost."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from intent.stores import DictStore
from intent.webhooks.delivery import Deliverer, parse_schedule, webhook_id
from intent.webhooks.subscriptions import Subscription, SubscriptionRegistry

CHANGE = {"id": "ic_0123", "type": "intent.changed", "to_intent": {"id": "cold_flu_care"}, "suggestions": []}


@dataclass
class Receiver:
    """A real aiohttp server whose answers the test scripts: a list of statuses, then 200."""

    answers: list[int] = field(default_factory=list)
    hold: asyncio.Event | None = None  # when set, every answer waits for it: a slow endpoint
    retry_after: str | None = None  # sent with 429, 502 and 504 answers
    on_request: Callable[[], None] | None = None
    received: list[tuple[dict[str, str], bytes, float]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((dict(request.headers), body, time.monotonic()))
        if self.on_request:
            self.on_request()
        if self.hold:
            await self.hold.wait()
        status = self.answers.pop(0) if self.answers else 200
        headers = {"Retry-After": self.retry_after} if status in (429, 502, 504) and self.retry_after else {}
        return web.Response(status=status, headers=headers)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Receiver], Awaitable[Receiver]]]:
    runners: list[web.AppRunner] = []

    async def start(receiver: Receiver) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks", receiver.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        receiver.url = f"http://127.0.0.1:{port}/hooks"
        runners.append(runner)
        return receiver

    yield start
    for runner in runners:
        await runner.cleanup()


@dataclass
class Harness:
    registry: SubscriptionRegistry
    store: DictStore
    dead_letters: list[dict[str, Any]]
    disabled: list[tuple[str, str]]
    dead_letter_failures: int = 0  # the next dead-letter sends that fail, as a broker that is down

    def subscribe(self, url: str) -> Subscription:
        subscription = Subscription.create(url, (), None)
        self.registry.apply(subscription.id, subscription.to_bytes())
        return subscription

    def deliverer(self, schedule: str = "0,0.2,0.2", **options: Any) -> Deliverer:
        async def dead_letter(record: dict[str, Any]) -> None:
            if self.dead_letter_failures:
                self.dead_letter_failures -= 1
                raise ConnectionError("the broker is not answering")
            self.dead_letters.append(record)

        async def disable(subscription: Subscription, reason: str) -> None:
            self.disabled.append((subscription.id, reason))
            self.registry.apply(subscription.id, replace(subscription, disabled_reason=reason).to_bytes())

        return Deliverer(
            self.registry,
            self.store,
            schedule=parse_schedule(schedule),
            timeout_seconds=options.get("timeout", 5.0),
            endpoint_concurrency=options.get("concurrency", 2),
            allow_private_urls=options.get("allow_private", True),
            dead_letter=dead_letter,
            disable=disable,
            owned_partitions=options.get("owned_partitions"),
            clock=options.get("clock", time.time),
            dead_letter_retry_seconds=options.get("dead_letter_retry_seconds", 10.0),
            on_attempt=options.get("on_attempt"),
        )


@pytest.fixture
def harness() -> Harness:
    return Harness(SubscriptionRegistry(), DictStore(), [], [])


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def test_a_receiver_using_standardwebhooks_verifies_the_signature_unmodified(serve, harness) -> None:
    receiver = await serve(Receiver())
    subscription = harness.subscribe(receiver.url)
    deliverer = harness.deliverer()
    await deliverer.start()
    try:
        deliverer.enqueue(CHANGE, [subscription], partition=0)
        await until(lambda: len(receiver.received) == 1 and not harness.store.data)
    finally:
        await deliverer.stop()
    headers, body, _ = receiver.received[0]
    verified = Webhook(subscription.secrets[0].secret).verify(body, headers)
    assert verified == CHANGE
    assert headers["webhook-id"] == webhook_id(CHANGE["id"], subscription.id)


async def test_two_failures_then_success_deliver_exactly_once_with_the_same_webhook_id(serve, harness) -> None:
    receiver = await serve(Receiver(answers=[500, 500]))
    subscription = harness.subscribe(receiver.url)
    deliverer = harness.deliverer()
    await deliverer.start()
    try:
        deliverer.enqueue(CHANGE, [subscription], partition=0)
        await until(lambda: len(receiver.received) == 3 and not harness.store.data)
        await asyncio.sleep(0.5)  # nothing more arrives once it succeeded
    finally:
        await deliverer.stop()
    assert len(receiver.received) == 3
    assert len({headers["webhook-id"] for headers, _, _ in receiver.received}) == 1
    assert harness.dead_letters == []


async def test_a_receiver_down_past_every_attempt_yields_a_dead_letter_with_every_attempt(serve, harness) -> None:
    receiver = await serve(Receiver(answers=[503, 500, 502]))
    subscription = harness.subscribe(receiver.url)
    deliverer = harness.deliverer("0,0.1,0.1")
    await deliverer.start()
    try:
        deliverer.enqueue(CHANGE, [subscription], partition=0)
        await until(lambda: len(harness.dead_letters) == 1)
    finally:
        await deliverer.stop()
    (record,) = harness.dead_letters
    assert [attempt["status"] for attempt in record["attempts"]] == [503, 500, 502]
    assert record["payload"] == CHANGE and record["url"] == receiver.url
    assert record["subscription_id"] == subscription.id and harness.store.data == {}


async def test_a_failed_dead_letter_send_keeps_the_delivery_until_a_later_send_succeeds(serve, harness) -> None:
    receiver = await serve(Receiver(answers=[503, 503]))
    subscription = harness.subscribe(receiver.url)
    harness.dead_letter_failures = 2
    deliverer = harness.deliverer("0,0.1", dead_letter_retry_seconds=0.5)
    await deliverer.start()
    try:
        deliverer.enqueue(CHANGE, [subscription], partition=0)
        await until(lambda: harness.dead_letter_failures == 1)  # the first dead-letter send failed
        (kept,) = deliverer.pending()  # so the delivery is still there, with both attempts
        assert [attempt.status for attempt in kept.attempts] == [503, 503]
        await until(lambda: len(harness.dead_letters) == 1 and not harness.store.data)
    finally:
        await deliverer.stop()
    assert [attempt["status"] for attempt in harness.dead_letters[0]["attempts"]] == [503, 503]
    assert len(receiver.received) == 2  # the endpoint was not called again: only the dead letter was retried


async def test_logs_and_dead_letters_show_the_endpoint_without_its_query_string(serve, harness, caplog) -> None:
    receiver = await serve(Receiver(answers=[500, 500]))
    subscription = harness.subscribe(f"{receiver.url}?token=s3cret")  # endpoints that authenticate by URL
    deliverer = harness.deliverer("0,0.1")
    await deliverer.start()
    try:
        with caplog.at_level("INFO", logger="intent.webhooks.delivery"):
            deliverer.enqueue(CHANGE, [subscription], partition=0)
            await until(lambda: len(harness.dead_letters) == 1)
    finally:
        await deliverer.stop()
    assert len(receiver.received) == 2  # the endpoint itself got the whole URL
    assert harness.dead_letters[0]["url"] == f"{receiver.url}?<redacted>"
    # our own log lines (the test receiver's access log, aiohttp's, shows what it was sent)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("intent."))
    assert ours and "s3cret" not in ours and "?<redacted>" in ours


async def test_an_unreachable_endpoint_records_the_error_of_each_attempt(harness) -> None:
    subscription = harness.subscribe("http://127.0.0.1:9/hooks")  # the discard port: nothing listens
    deliverer = harness.deliverer("0,0.1")
    await deliverer.start()
    try:
        deliverer.enqueue(CHANGE, [subscription], partition=0)
        await until(lambda: len(harness.dead_letters) == 1)
    finally:
        await deliverer.stop()
    attempts = harness.dead_letters[0]["attempts"]
    assert len(attempts) == 2 and all(a["status"] is None and "Connect" in a["error"] for a in attempts)


async def test_a_slow_receiver_does_not_delay_another(serve, harness) -> None:
    slow = await serve(Receiver(hold=asyncio.Event()))  # answers nothing until the test lets it
    fast = await serve(Receiver())
    deliverer = harness.deliverer(concurrency=1)
    await deliverer.start()
    try:
        for number in range(3):  # a queue of deliveries for the slow endpoint
            deliverer.enqueue({**CHANGE, "id": f"ic_{number}"}, [harness.subscribe(slow.url)], partition=0)
        await until(lambda: len(slow.received) == 1)
        deliverer.enqueue(CHANGE, [harness.subscribe(fast.url)], partition=0)
        await until(lambda: len(fast.received) == 1)  # while the slow endpoint still holds its request
        assert len(slow.received) == 1  # concurrency 1: the slow endpoint had one attempt in flight
        slow.hold.set()
        await until(lambda: len(slow.received) == 3 and not harness.store.data)
    finally:
        await deliverer.stop()


async def test_pending_deliveries_survive_a_restart_and_are_delivered_after_it(serve, harness) -> None:
    receiver = await serve(Receiver(answers=[500]))
    subscription = harness.subscribe(receiver.url)
    first = harness.deliverer("0,1")
    await first.start()
    first.enqueue(CHANGE, [subscription], partition=0)
    await until(lambda: len(receiver.received) == 1 and len(first.pending()) == 1 and first.pending()[0].attempts)
    await first.stop()  # the worker goes away with a retry pending in its store

    second = harness.deliverer("0,1")  # a new worker on the restored store
    await second.start()
    try:
        await until(lambda: len(receiver.received) == 2 and not harness.store.data)
    finally:
        await second.stop()
    assert receiver.received[0][0]["webhook-id"] == receiver.received[1][0]["webhook-id"]


async def test_410_gone_disables_the_subscription_and_ends_the_delivery(serve, harness) -> None:
    receiver = await serve(Receiver(answers=[410]))
    subscription = harness.subscribe(receiver.url)
    deliverer = harness.deliverer()
    await deliverer.start()
    try:
        deliverer.enqueue(CHANGE, [subscription], partition=0)
        await until(lambda: bool(harness.disabled))
        deliverer.enqueue({**CHANGE, "id": "ic_next"}, harness.registry.matching("cold_flu_care"), partition=0)
        await asyncio.sleep(0.3)
    finally:
        await deliverer.stop()
    assert harness.disabled == [(subscription.id, "the endpoint answered 410 Gone")]
    assert len(receiver.received) == 1 and harness.store.data == {} and harness.dead_letters == []


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    ("status", "retry_after", "least_wait"),
    [
        (429, "120", 120),  # the endpoint asks for more than the schedule's 1 s
        (502, "120", 120),
        (504, None, 1),  # no Retry-After: the schedule
        (429, "0", 1),  # never sooner than the schedule
        (429, "in a while", 1),  # unreadable: the schedule
    ],
)
async def test_back_off_answers_wait_as_long_as_retry_after_asks_and_never_less_than_the_schedule(
    serve, harness, status: int, retry_after: str | None, least_wait: float
) -> None:
    receiver = await serve(Receiver(answers=[status], retry_after=retry_after))
    deliverer = harness.deliverer("0,1")
    await deliverer.start()
    try:
        deliverer.enqueue(CHANGE, [harness.subscribe(receiver.url)], partition=0)
        await until(lambda: bool(deliverer.pending() and deliverer.pending()[0].attempts))
    finally:
        await deliverer.stop()
    (delivery,) = deliverer.pending()
    assert delivery.attempts[0].status == status
    assert delivery.next_attempt_at - delivery.attempts[0].at >= least_wait
    assert delivery.next_attempt_at - delivery.attempts[0].at < least_wait + 60


async def test_retry_after_as_an_http_date_is_honoured(serve, harness) -> None:
    receiver = await serve(Receiver(answers=[429], retry_after=http_date(600)))
    deliverer = harness.deliverer("0,1")
    await deliverer.start()
    try:
        deliverer.enqueue(CHANGE, [harness.subscribe(receiver.url)], partition=0)
        await until(lambda: bool(deliverer.pending() and deliverer.pending()[0].attempts))
    finally:
        await deliverer.stop()
    (delivery,) = deliverer.pending()
    # the date has a resolution of one second
    assert 598 <= delivery.next_attempt_at - delivery.attempts[0].at <= 601


async def test_a_rotation_signs_with_both_secrets_until_the_overlap_ends(serve, harness) -> None:
    receiver = await serve(Receiver())
    old = harness.subscribe(receiver.url)
    rotated = old.rotated(overlap_seconds=60, now=time.time())
    harness.registry.apply(rotated.id, rotated.to_bytes())
    deliverer = harness.deliverer()
    await deliverer.start()
    try:
        deliverer.enqueue(CHANGE, [rotated], partition=0)
        await until(lambda: len(receiver.received) == 1)
    finally:
        await deliverer.stop()
    headers, body, _ = receiver.received[0]
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (old.secrets[0].secret, rotated.secrets[0].secret):
        assert Webhook(secret).verify(body, headers) == CHANGE


async def test_after_the_rotation_overlap_only_the_new_secret_signs(serve, harness) -> None:
    receiver = await serve(Receiver())
    old = harness.subscribe(receiver.url)
    rotated = old.rotated(overlap_seconds=60, now=time.time())
    harness.registry.apply(rotated.id, rotated.to_bytes())
    deliverer = harness.deliverer(clock=lambda: time.time() + 61)  # the overlap has ended
    await deliverer.start()
    try:
        deliverer.enqueue(CHANGE, [rotated], partition=0)
        await until(lambda: len(receiver.received) == 1)
    finally:
        await deliverer.stop()
    headers, body, _ = receiver.received[0]
    assert len(headers["webhook-signature"].split()) == 1
    assert Webhook(rotated.secrets[0].secret).verify(body, headers) == CHANGE
    with pytest.raises(WebhookVerificationError):
        Webhook(old.secrets[0].secret).verify(body, headers)


async def test_the_target_is_checked_again_at_delivery_time(serve, harness) -> None:
    receiver = await serve(Receiver())
    # accepted when subscribing (say the name resolved to a public address then); loopback now
    subscription = harness.subscribe(receiver.url.replace("http://", "https://"))
    deliverer = harness.deliverer("0,0.1", allow_private=False)
    await deliverer.start()
    try:
        deliverer.enqueue(CHANGE, [subscription], partition=0)
        await until(lambda: len(harness.dead_letters) == 1)
    finally:
        await deliverer.stop()
    attempts = harness.dead_letters[0]["attempts"]
    assert len(attempts) == 2 and all("loopback" in attempt["error"] for attempt in attempts)
    assert receiver.received == []


async def test_a_worker_leaves_the_deliveries_of_partitions_it_does_not_own_to_their_owner(serve, harness) -> None:
    receiver = await serve(Receiver())
    subscription = harness.subscribe(receiver.url)
    other_workers = harness.deliverer(owned_partitions=lambda: {0, 2})  # partition 1 was revoked
    await other_workers.start()
    try:
        other_workers.enqueue({**CHANGE, "id": "ic_mine"}, [subscription], partition=0)
        other_workers.enqueue({**CHANGE, "id": "ic_revoked"}, [subscription], partition=1)
        await until(lambda: len(receiver.received) == 1)
        await asyncio.sleep(1.2)  # a few scans of the store
    finally:
        await other_workers.stop()
    assert [orjson.loads(body)["id"] for _, body, _ in receiver.received] == ["ic_mine"]
    owner = harness.deliverer(owned_partitions=lambda: {1})
    await owner.start()
    try:
        await until(lambda: len(receiver.received) == 2 and not harness.store.data)
    finally:
        await owner.stop()
    assert orjson.loads(receiver.received[1][1])["id"] == "ic_revoked"


async def test_a_410_does_not_bring_back_a_subscription_deleted_during_the_attempt(serve, harness) -> None:
    receiver = await serve(Receiver(answers=[410]))
    subscription = harness.subscribe(receiver.url)
    receiver.on_request = lambda: harness.registry.apply(subscription.id, None)  # unsubscribed meanwhile
    deliverer = harness.deliverer()
    await deliverer.start()
    try:
        deliverer.enqueue(CHANGE, [subscription], partition=0)
        await until(lambda: len(receiver.received) == 1 and not harness.store.data)
    finally:
        await deliverer.stop()
    assert harness.disabled == [] and harness.registry.get(subscription.id) is None


def test_payloads_over_20_kb_are_refused(harness) -> None:
    deliverer = harness.deliverer()
    with pytest.raises(ValueError, match="20480 bytes"):
        deliverer.enqueue({**CHANGE, "padding": "x" * 21_000}, [harness.subscribe("http://127.0.0.1/")], 0)


def test_the_retry_schedule_setting_is_validated() -> None:
    assert parse_schedule("0, 5,300") == (0.0, 5.0, 300.0)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_schedule("5,-1")
    assert orjson.loads(orjson.dumps(CHANGE)) == CHANGE


async def test_every_attempt_and_ping_is_told_to_on_attempt_with_its_outcome(serve, harness) -> None:
    receiver = await serve(Receiver(answers=[503]))
    subscription = harness.subscribe(receiver.url)
    heard: list[tuple[str, str, str, int | None]] = []
    deliverer = harness.deliverer(
        on_attempt=lambda sub, message_id, payload, attempt: heard.append(
            (sub.id, message_id, payload["type"], attempt.status)
        )
    )
    await deliverer.start()
    try:
        deliverer.enqueue(CHANGE, [subscription], partition=0)
        await until(lambda: len(receiver.received) == 2 and not harness.store.data)
        await deliverer.ping(subscription)
    finally:
        await deliverer.stop()
    delivery = webhook_id(CHANGE["id"], subscription.id)
    assert heard[:2] == [
        (subscription.id, delivery, "intent.changed", 503),
        (subscription.id, delivery, "intent.changed", 200),
    ]
    assert heard[2][0] == subscription.id and heard[2][2:] == ("intent.ping", 200)
