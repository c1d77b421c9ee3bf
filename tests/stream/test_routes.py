"""The worker's routes alone: readiness says which check fails, and `/status` counts without naming
any shopper."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from intent.domain import effective_window_policy, load_domain
from intent.events import parse_event
from intent.model import IntentModel
from intent.settings import Settings
from intent.simulate import Simulator
from intent.stores import DictStore
from intent.stream.routes import WorkerRoutes
from intent.tracking import IntentTracker
from intent.webhooks.api import SubscriptionsApi
from intent.webhooks.delivery import Deliverer
from intent.webhooks.subscriptions import SubscriptionLog

TOKEN = "a-token"


@pytest.fixture
def broker_up() -> list[bool]:
    return [True]


@pytest.fixture
async def worker(tmp_path: Path, broker_up: list[bool]) -> AsyncIterator[tuple[TestClient, DictStore]]:
    settings = Settings(data_dir=tmp_path)
    sessions, shoppers = DictStore(), DictStore()
    tracker = IntentTracker(
        IntentModel.load(settings.model_dir),
        effective_window_policy(settings, load_domain(settings.domain_dir)),
        sessions,
        shoppers,
    )
    shopper = Simulator(seed=3).shoppers(1)[0]
    tracker.process([parse_event(orjson.dumps(event), f"t/0/{n}") for n, event in enumerate(shopper.events)])
    tracker.save()
    subscriptions = SubscriptionLog("127.0.0.1:1", "subscriptions")

    async def nothing(*_: object) -> None:
        return None

    deliverer = Deliverer(
        subscriptions.registry,
        DictStore(),
        schedule=(0.0,),
        timeout_seconds=1.0,
        endpoint_concurrency=1,
        allow_private_urls=False,
        dead_letter=nothing,
        disable=nothing,
    )
    routes = WorkerRoutes(
        "intent-test",
        tracker,
        sessions.data,
        shoppers.data,
        owned_partitions=lambda: {0, 2},
        broker_ready=lambda: broker_up[0],
        api=SubscriptionsApi(
            subscriptions,
            deliverer,
            tokens=(TOKEN,),
            intent_ids=tracker.model.intent_ids,
            allow_private_urls=False,
            secret_overlap_seconds=60,
            clock=time.time,
        ),
    )
    web_app = web.Application()
    routes.mount(web_app)
    client = TestClient(TestServer(web_app))
    await client.start_server()
    try:
        yield client, shoppers if shoppers.data else sessions
    finally:
        await client.close()


async def test_status_counts_windows_and_names_no_shopper(worker: tuple[TestClient, DictStore]) -> None:
    client, windows = worker
    async with client.get("/status") as response:
        body = await response.text()
    status = orjson.loads(body)

    assert status["partitions"] == [0, 2] and status["events"] > 0
    assert status["sessions"] + status["shoppers"] >= 1
    assert not any(key in body for key in windows.data)


async def test_readiness_fails_with_the_broker_and_says_so(
    worker: tuple[TestClient, DictStore], broker_up: list[bool]
) -> None:
    client, _ = worker
    async with client.get("/readyz") as response:
        assert response.status == 200
    broker_up[0] = False
    async with client.get("/readyz") as response:
        assert response.status == 503
        assert (await response.json())["checks"] == {
            "model_loaded": True,
            "broker_connected": False,
            "partitions_assigned": True,
        }


async def test_the_api_is_mounted_behind_the_token(worker: tuple[TestClient, DictStore]) -> None:
    client, _ = worker
    async with client.get("/v1/subscriptions") as response:
        assert response.status == 401
