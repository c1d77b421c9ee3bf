"""Dead letters re-sent by `intent webhooks replay`, on a real broker and a real receiver."""

from __future__ import annotations

import uuid
from dataclasses import replace

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook

from intent.kafka import ensure_topics, producer
from intent.webhooks.delivery import replay_dead_letters, webhook_id
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


async def test_replay_re_sends_one_subscriptions_dead_letters_with_their_original_webhook_id(broker) -> None:
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

    try:
        only_chosen = await replay_dead_letters(
            broker.bootstrap_servers,
            dead_letter_topic,
            subscriptions_topic,
            subscription_id=chosen.id,
            timeout_seconds=5,
            allow_private_urls=True,
        )
        assert (only_chosen.delivered, only_chosen.failed, only_chosen.skipped) == (2, 0, 0)
        assert sorted(headers["webhook-id"] for headers, _ in received) == sorted(
            [webhook_id("ic_1", chosen.id), webhook_id("ic_3", chosen.id)]
        )
        for headers, body in received:
            assert Webhook(chosen.secrets[0].secret).verify(body, headers)["type"] == "intent.changed"

        everything = await replay_dead_letters(
            broker.bootstrap_servers,
            dead_letter_topic,
            subscriptions_topic,
            subscription_id=None,
            timeout_seconds=5,
            allow_private_urls=True,
        )
        assert (everything.delivered, everything.failed, everything.skipped) == (3, 0, 1)  # the disabled one
    finally:
        await receiver.close()
