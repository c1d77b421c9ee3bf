"""From shopper events to signed webhooks, on a real broker with real worker processes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from intent.demo import subscribe
from intent.replay import replay
from intent.settings import REPO_DIR
from tests.integration.conftest import API_TOKEN, Deployment, read_until
from tests.integration.test_stream import STORY_SHOPPER, story_lines

pytestmark = pytest.mark.integration


class Receiver:
    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        return web.Response(status=self.answers.pop(0) if self.answers else 200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hooks = Receiver([])
    app = web.Application()
    app.router.add_post("/hooks", hooks.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hooks.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    yield hooks
    await runner.cleanup()


async def until(condition, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.2)


async def test_the_story_reaches_the_subscriber_signed_with_suggestions_even_across_a_restart(
    deployment: Deployment, receiver: Receiver
) -> None:
    receiver.answers = [500]  # the first attempt fails; the retry is due 8 s later
    schedule = {"INTENT_WEBHOOK_RETRY_SCHEDULE": "0,8"}
    first = deployment.start_worker(**schedule)
    subscription = await subscribe(
        f"http://127.0.0.1:{deployment.web_ports[0]}", API_TOKEN, receiver.url, 120, ["cold_flu_care"]
    )
    await replay(story_lines(), deployment.broker.bootstrap_servers, deployment.events_topic)
    await until(lambda: len(receiver.received) == 1, 120)
    await asyncio.sleep(2)  # the pending retry reaches its changelog
    first.send_signal(signal.SIGKILL)
    first.wait()

    deployment.start_worker(**schedule)  # restores the pending delivery and keeps its schedule
    await until(lambda: len(receiver.received) == 2, 150)
    (first_headers, _), (headers, body) = receiver.received
    assert headers["webhook-id"] == first_headers["webhook-id"]
    payload = Webhook(subscription["secret"]).verify(body, headers)
    assert payload["shopper_id"] == STORY_SHOPPER and payload["to_intent"]["id"] == "cold_flu_care"
    assert payload["from_intent"]["id"] == "coffee_ritual"
    assert payload["holdout"] is False
    assert payload["suggestions"][0]["name"] == "Cold Relief Herbal Tea x20"
    assert all(s["reasons"] for s in payload["suggestions"])
    await asyncio.sleep(3)
    assert len(receiver.received) == 2  # delivered once, not again


async def test_undeliverable_changes_are_dead_lettered_and_replayed_by_the_command_once(
    deployment: Deployment, receiver: Receiver
) -> None:
    receiver.answers = [503, 503]
    environment = {"INTENT_WEBHOOK_RETRY_SCHEDULE": "0,1"}
    deployment.start_worker(**environment)
    endpoint = f"{receiver.url}?token=s3cret"  # an endpoint that also wants a token in its URL
    subscription = await subscribe(
        f"http://127.0.0.1:{deployment.web_ports[0]}", API_TOKEN, endpoint, 120, ["cold_flu_care"]
    )
    await replay(story_lines(), deployment.broker.bootstrap_servers, deployment.events_topic)
    (letter,) = await read_until(
        deployment.broker.bootstrap_servers, deployment.webhook_dead_letter_topic, lambda r: len(r) >= 1, 120
    )
    assert letter["subscription_id"] == subscription["id"] and letter["url"] == f"{receiver.url}?<redacted>"
    assert [attempt["status"] for attempt in letter["attempts"]] == [503, 503]
    assert letter["payload"]["to_intent"]["id"] == "cold_flu_care"
    assert all("s3cret" not in log.read_text() for log in deployment.root.glob("worker-*.log"))

    def replay_command() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "intent", "webhooks", "replay"],
            env=deployment.environment(),
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            timeout=120,
        )

    replayed = await asyncio.to_thread(replay_command)
    assert replayed.returncode == 0, replayed.stderr
    assert "1 delivered, 0 failed again" in replayed.stdout
    headers, body = receiver.received[-1]
    assert headers["webhook-id"] == letter["webhook_id"]
    assert orjson.loads(body) == letter["payload"]

    again = await asyncio.to_thread(replay_command)  # remembers what it delivered
    assert again.returncode == 0, again.stderr
    assert "0 delivered" in again.stdout and "1 delivered by an earlier replay" in again.stdout
    assert len(receiver.received) == 3
    assert "s3cret" not in replayed.stderr + again.stderr
