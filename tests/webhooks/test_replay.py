"""Dead letters re-sent by `intent webhooks replay`, on a real broker and a real receiver."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook

from intent.kafka import CompactedTopic, ensure_topics, producer
from intent.webhooks.delivery import ReplayReport, replay_dead_letters, replayed_topic, webhook_id
from intent.webhooks.subscriptions import Subscription, SubscriptionLog

pytestmark = pytest.mark.integration


def dead_letter(subscription: Subscription, change_id: str) -> dict[str, object]:
    return {
        "webhook_id": webhook_id(change_id, subscription.id),
        "subscription_id": subscription.id,
        "url": subscription.url,
        "payload": {"id": change_id, "type": "intent.changed"},
        "attempts": [{"at": "2026-01-01T00:00:00Z", "seconds": 15.0, "status": None, "error": "timed out"}],
    }


async def test_replay_re_sends_dead_letters_with_their_original_webhook_id_once_each(broker) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=200)

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", hook)
    receiver = TestServer(receiver_app)
    await receiver.start_server()
    url = str(receiver.make_url("/hook"))

    subscriptions_topic, dead_letter_topic = f"subs-{uuid.uuid4().hex[:8]}", f"dlq-{uuid.uuid4().hex[:8]}"
    log = SubscriptionLog(broker.bootstrap_servers, subscriptions_topic)
    await log.start()
    chosen, other, disabled = (Subscription.create(url, (), None) for _ in range(3))
    for subscription in (chosen, other, replace(disabled, disabled_reason="the endpoint answered 410 Gone")):
        await log.put(subscription)
    await log.stop()

    await ensure_topics(broker.bootstrap_servers, [dead_letter_topic], 2)
    letters = producer(broker.bootstrap_servers)
    await letters.start()
    try:
        for subscription, change_id in [(chosen, "ic_1"), (other, "ic_2"), (chosen, "ic_3"), (disabled, "ic_4")]:
            record = dead_letter(subscription, change_id)
            await letters.send_and_wait(dead_letter_topic, orjson.dumps(record), key=subscription.id.encode())
    finally:
        await letters.stop()

    async def replay(subscription_id: str | None, include_replayed: bool = False) -> ReplayReport:
        return await replay_dead_letters(
            broker.bootstrap_servers,
            dead_letter_topic,
            subscriptions_topic,
            subscription_id=subscription_id,
            timeout_seconds=5,
            allow_private_urls=True,
            include_replayed=include_replayed,
        )

    try:
        only_chosen = await replay(subscription_id=chosen.id)
        assert (only_chosen.delivered, only_chosen.failed, only_chosen.skipped) == (2, 0, 0)
        assert sorted(headers["webhook-id"] for headers, _ in received) == sorted(
            [webhook_id("ic_1", chosen.id), webhook_id("ic_3", chosen.id)]
        )
        for headers, body in received:
            assert Webhook(chosen.secrets[0].secret).verify(body, headers)["type"] == "intent.changed"

        everything = await replay(subscription_id=None)
        # the chosen subscription's two were delivered by the first run: only the other one is sent
        assert (everything.delivered, everything.failed, everything.skipped) == (1, 0, 1)  # the disabled one
        assert everything.already_replayed == 2 and len(received) == 3

        again = await replay(subscription_id=None)
        assert (again.delivered, again.failed, again.already_replayed) == (0, 0, 3) and len(received) == 3

        forced = await replay(subscription_id=None, include_replayed=True)
        assert (forced.delivered, forced.failed, forced.skipped, forced.already_replayed) == (3, 0, 1, 0)
        assert len(received) == 6
    finally:
        await receiver.close()


async def test_a_failed_re_send_is_tried_again_by_the_next_replay_and_delivered_once(broker) -> None:
    answers = [503]  # the first re-send fails

    async def hook(request: web.Request) -> web.Response:
        return web.Response(status=answers.pop(0) if answers else 200)

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", hook)
    receiver = TestServer(receiver_app)
    await receiver.start_server()
    subscriptions_topic, dead_letter_topic = f"subs-{uuid.uuid4().hex[:8]}", f"dlq-{uuid.uuid4().hex[:8]}"
    log = SubscriptionLog(broker.bootstrap_servers, subscriptions_topic)
    await log.start()
    subscription = Subscription.create(str(receiver.make_url("/hook")), (), None)
    await log.put(subscription)
    await log.stop()
    await ensure_topics(broker.bootstrap_servers, [dead_letter_topic], 2)
    letters = producer(broker.bootstrap_servers)
    await letters.start()
    try:
        # the same delivery dead-lettered twice: a worker stopped between its dead letter and forgetting it
        for _ in range(2):
            record = orjson.dumps(dead_letter(subscription, "ic_1"))
            await letters.send_and_wait(dead_letter_topic, record, key=subscription.id.encode())
    finally:
        await letters.stop()

    async def replay() -> tuple[int, int, int]:
        report = await replay_dead_letters(
            broker.bootstrap_servers,
            dead_letter_topic,
            subscriptions_topic,
            subscription_id=None,
            timeout_seconds=5,
            allow_private_urls=True,
        )
        return report.delivered, report.failed, report.already_replayed

    try:
        assert await replay() == (1, 1, 0)  # failed, then its duplicate delivered
        assert await replay() == (0, 0, 2)
    finally:
        await receiver.close()


async def test_markers_of_dead_letters_no_longer_in_the_topic_are_deleted(broker) -> None:
    subscriptions_topic, dead_letter_topic = f"subs-{uuid.uuid4().hex[:8]}", f"dlq-{uuid.uuid4().hex[:8]}"
    await ensure_topics(broker.bootstrap_servers, [dead_letter_topic], 2)
    markers: dict[str, bytes | None] = {}
    topic = CompactedTopic(broker.bootstrap_servers, replayed_topic(dead_letter_topic), markers.__setitem__)
    await topic.start()
    try:
        # replayed once; since then the dead-letter topic's retention removed the letter
        await topic.write("msg_gone", b'{"replayed_at": "2026-01-01T00:00:00Z"}')
        report = await replay_dead_letters(
            broker.bootstrap_servers,
            dead_letter_topic,
            subscriptions_topic,
            subscription_id=None,
            timeout_seconds=5,
            allow_private_urls=True,
        )
        assert (report.delivered, report.already_replayed) == (0, 0)
        async with asyncio.timeout(30):
            while markers["msg_gone"] is not None:  # the tombstone reaches this follower too
                await asyncio.sleep(0.1)
    finally:
        await topic.stop()
