"""Schemathesis generates requests from the API's own /openapi.json: never a server error."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from intent.taxonomy import load_taxonomy
from intent.webhooks.api import openapi_document
from tests.webhooks.test_api import AUTH, api_client

pytestmark = pytest.mark.integration

SCHEMA = schemathesis.openapi.from_dict(openapi_document(load_taxonomy().ids))


@pytest.fixture(scope="module")
def live_api(broker):
    """The API on a real port, in a loop of its own thread (schemathesis calls it synchronously)."""
    loop = asyncio.new_event_loop()
    import threading

    ready = threading.Event()
    state: dict = {}

    async def start() -> None:
        client, _ = await api_client(broker.bootstrap_servers, f"fuzz-{uuid.uuid4().hex[:8]}")
        state["client"] = client
        state["url"] = str(client.make_url("")).rstrip("/")
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(60)
    yield state["url"]
    asyncio.run_coroutine_threadsafe(state["client"].close(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=SCHEMA.as_strategy())
def test_no_generated_request_makes_the_api_fail(live_api: str, case) -> None:
    response = case.call(base_url=live_api, headers=AUTH)
    assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text)
    if response.status_code >= 400 and response.status_code != 404:
        assert response.json()["error"]
