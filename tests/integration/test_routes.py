"""Every route of every web app the project serves is public by design or refuses a caller without
its credential; nothing else is served (Faust's own pages read tables without any credential).

The routes are walked from each application's aiohttp router, so a route added later is walked too:
it passes only if it answers 401 without the credential, or if it is added to a public list below
with the reason it may be public. A module that starts serving routes fails
`test_every_module_that_serves_routes_is_walked_here` until its application is walked here.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from intent.app import create_worker
from intent.collector import create_collector_app
from intent.console.sessions import COOKIE_NAME
from intent.demo import DemoReceiver, receiver_app
from intent.kafka import ensure_topics, producer, wait_for_lag_zero
from intent.replay import replay
from intent.settings import PACKAGE_DIR, Settings
from tests.integration.conftest import API_TOKEN, Deployment
from tests.integration.console import wait_for_console
from tests.integration.test_stream import JOIN_AND_CATCH_UP_SECONDS, STORY_SHOPPER, story_lines

pytestmark = pytest.mark.integration

# path -> why it may answer without a credential
WORKER_PUBLIC = {
    "/healthz": "liveness probe: says alive",
    "/readyz": "readiness probe: names the checks, no data",
    "/metrics": "Prometheus scrape: counters and gauges, no shopper ids",
    "/status": "aggregate counts, partitions and the model version, no shopper ids",
    "/openapi.json": "the API's description, the same for every deployment",
    "/console": "redirects to the console's page",
    "/console/": "the console's page: static HTML without data (its calls need the session)",
    "/console/console.js": "the console's script, static",
    "/console/console.css": "the console's style, static",
}
COLLECTOR_PUBLIC = {
    "/healthz": "liveness probe",
    "/readyz": "readiness probe",
    "/metrics": "Prometheus scrape",
}
RECEIVER_PUBLIC = {"/healthz": "liveness probe of the demo receiver"}
# Faust's pages: none may be served
FAUST_PAGES = [
    "/",
    "/router/",
    "/router/shopper-windows/x/",
    "/table/",
    "/table/shopper-windows/",
    f"/table/shopper-windows/{STORY_SHOPPER}/",
    f"/table/session-windows/{STORY_SHOPPER}|-/",
    "/graph/",
    "/stats/",
    "/assignment/",
    "/performance/",
]
STATUS_FIELDS = {"app_id", "model_version", "partitions", "sessions", "shoppers", "events"}


def routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, path) of every route of `app`, path variables filled in."""
    walked = []
    for route in app.router.routes():
        resource = route.resource
        assert isinstance(resource, web.PlainResource | web.DynamicResource), (
            f"{resource!r}: a kind of route this walk does not know; walk it here"
        )
        walked.append((route.method, re.sub(r"\{[^}]+\}", "probe", resource.canonical)))
    return walked


async def refused_without_credential(
    http: aiohttp.ClientSession, base: str, app: web.Application, public: dict[str, str], wrong: dict[str, str]
) -> list[tuple[str, str]]:
    """Walk `app`'s routes on the server at `base`; returns the routes that were served."""
    walked = routes(app)
    assert walked
    for method, path in walked:
        if path in public:
            async with http.request(method, base + path) as response:
                assert response.status == 200, (method, path, response.status)
            continue
        for headers in ({}, wrong):
            async with http.request(method, base + path, headers=headers) as response:
                assert response.status == 401, f"{method} {path} answered {response.status} to {headers or 'nobody'}"
    served = {path for _, path in walked}
    assert set(public) <= served, f"public paths not served any more: {set(public) - served}"
    return walked


def test_every_module_that_serves_routes_is_walked_here() -> None:
    serving = re.compile(r"web\.Application\(|\.router\.add_|\.add_routes\(|add_health_routes\(")
    modules = {
        path.relative_to(PACKAGE_DIR).as_posix()
        for path in PACKAGE_DIR.rglob("*.py")
        if serving.search(path.read_text())
    }
    walked = {
        "stream/routes.py": "the worker: test_every_route_of_the_worker_...",
        "observability.py": "health routes of the worker and the collector",
        "webhooks/api.py": "the worker's API",
        "console/routes.py": "the worker's console",
        "read/api.py": "the worker's read API (a shopper's intent and timeline)",
        "collector.py": "test_every_route_of_the_collector_...",
        "demo.py": "test_every_route_of_the_demo_receiver_...",
    }
    assert modules == set(walked), "a module serves routes: walk its application in this file"


async def test_every_route_of_the_worker_is_public_by_design_or_needs_the_token_and_faust_pages_are_gone(
    deployment: Deployment, tmp_path: Path
) -> None:
    deployment.start_worker()
    bootstrap = deployment.broker.bootstrap_servers
    await replay(story_lines(), bootstrap, deployment.events_topic)
    await wait_for_lag_zero(bootstrap, deployment.app_id, deployment.events_topic, JOIN_AND_CATCH_UP_SECONDS)
    # the worker's own application, built as the worker builds it (Faust mounts its pages in init_server)
    worker = create_worker(Settings(api_tokens=API_TOKEN, data_dir=tmp_path / "routes"))
    worker.app.web.init_server()
    base = f"http://127.0.0.1:{deployment.web_ports[0]}"
    await wait_for_console(base)  # until then its routes answer 503 to everyone
    async with aiohttp.ClientSession() as http:
        # a wrong token for the API, a forged session cookie for the console
        wrong = {"Authorization": "Bearer not-the-token", "Cookie": f"{COOKIE_NAME}=forged"}
        walked = await refused_without_credential(http, base, worker.app.web.web_app, WORKER_PUBLIC, wrong)
        assert ("POST", "/console/api/login") in walked and ("GET", "/console/api/live") in walked
        for path in FAUST_PAGES:
            async with http.get(base + path) as response:
                assert response.status == 404, f"{path} is served: {response.status}"
        async with http.get(base + "/status") as response:
            raw = await response.read()
    status = orjson.loads(raw)
    assert set(status) == STATUS_FIELDS and status["shoppers"] == 1, status
    assert STORY_SHOPPER.encode() not in raw


@pytest.fixture
async def collector_app(broker) -> AsyncIterator[tuple[web.Application, TestClient]]:
    settings = Settings(
        broker_url=f"kafka://{broker.bootstrap_servers}",
        events_topic="routes-events",
        identities_topic="routes-identities",
        write_keys="the-write-key",
    )
    await ensure_topics(broker.bootstrap_servers, [settings.events_topic], 1)
    events_producer = producer(broker.bootstrap_servers)
    await events_producer.start()
    app = create_collector_app(settings, events_producer)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield app, client
    await client.close()
    await events_producer.stop()


async def test_every_route_of_the_collector_is_public_by_design_or_needs_a_write_key(collector_app) -> None:
    app, client = collector_app
    wrong = {"Authorization": "Basic bm90LWEta2V5Og=="}  # not-a-key:
    async with aiohttp.ClientSession() as http:
        await refused_without_credential(http, str(client.make_url("/")).rstrip("/"), app, COLLECTOR_PUBLIC, wrong)


async def test_every_route_of_the_demo_receiver_is_public_by_design_or_needs_a_signature() -> None:
    app = receiver_app(DemoReceiver())
    client = TestClient(TestServer(app))
    await client.start_server()
    wrong = {"webhook-id": "msg_1", "webhook-timestamp": "1", "webhook-signature": "v1,bm90"}
    try:
        async with aiohttp.ClientSession() as http:
            await refused_without_credential(http, str(client.make_url("/")).rstrip("/"), app, RECEIVER_PUBLIC, wrong)
    finally:
        await client.close()
