"""The subscriptions API on a real broker (subscriptions are a compacted topic) and a real server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from intent.erasure import ShopperErasure, erase_state
from intent.kafka import CompactedTopic
from intent.policy import CapEntry
from intent.read.latest import LatestChanges
from intent.stores import DictStore
from intent.taxonomy import load_taxonomy
from intent.webhooks.api import SubscriptionsApi, openapi_document
from intent.webhooks.delivery import Deliverer, parse_schedule
from intent.webhooks.subscriptions import SubscriptionLog, SubscriptionRegistry
from intent.window import Window

pytestmark = pytest.mark.integration
TOKEN = "secret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def api_client(
    bootstrap: str, topic: str, allow_private: bool = False, erasure: ShopperErasure | None = None
) -> tuple[TestClient, SubscriptionLog]:
    log = SubscriptionLog(bootstrap, topic)
    await log.start()

    async def ignore(*_: object) -> None: ...

    deliverer = Deliverer(
        log.registry,
        DictStore(),
        schedule=parse_schedule("0"),
        timeout_seconds=5,
        endpoint_concurrency=1,
        allow_private_urls=allow_private,
        dead_letter=ignore,
        disable=ignore,
    )
    await deliverer.start()
    app = web.Application()
    SubscriptionsApi(
        log,
        deliverer,
        tokens=(TOKEN,),
        intent_ids=load_taxonomy().ids,
        allow_private_urls=allow_private,
        secret_overlap_seconds=3600,
        clock=time.time,
        erasure=erasure,
    ).add_routes(app)
    app.on_cleanup.append(lambda _: deliverer.stop())
    app.on_cleanup.append(lambda _: log.stop())
    client = TestClient(TestServer(app))
    await client.start_server()
    return client, log


@pytest.fixture
async def client(broker) -> AsyncIterator[TestClient]:
    http, _ = await api_client(broker.bootstrap_servers, f"subs-{uuid.uuid4().hex[:8]}")
    yield http
    await http.close()


async def test_every_call_needs_a_known_bearer_token(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = await client.get("/v1/subscriptions", headers=headers)
        assert response.status == 401
        assert "Bearer" in (await response.json())["error"]


async def test_bad_input_is_a_400_naming_the_field(client: TestClient) -> None:
    cases = [
        (b"not json", None),
        (b'{"intents": []}', "url"),
        (b'{"url": "http://example.com/hook"}', "url"),  # https only
        (b'{"url": "https://93.184.215.14/h", "intents": ["no_such_intent"]}', "intents"),
        (b'{"url": "https://93.184.215.14/h", "intents": "cold_flu_care"}', "intents"),
        (b'{"url": "https://93.184.215.14/h", "colour": "red"}', "colour"),
        (b'{"url": "https://93.184.215.14/h", "description": 7}', "description"),
        (b'{"url": "https://exa..mple.com/h"}', "url"),  # an IDNA error: a 400 with the reason, not a 500
        (b'{"url": "https://100.64.0.1/h"}', "url"),  # not globally routable
    ]
    for body, field in cases:
        response = await client.post("/v1/subscriptions", data=body, headers=AUTH)
        answer = await response.json()
        assert response.status == 400, body
        assert answer.get("field") == field and answer["error"], (body, answer)


async def test_a_subscription_is_created_shown_rotated_and_deleted(client: TestClient) -> None:
    created = await client.post(
        "/v1/subscriptions", json={"url": "https://93.184.215.14/hooks", "intents": ["cold_flu_care"]}, headers=AUTH
    )
    assert created.status == 201
    subscription = await created.json()
    assert subscription["secret"].startswith("whsec_") and subscription["intents"] == ["cold_flu_care"]
    identifier = subscription["id"]

    shown = await (await client.get(f"/v1/subscriptions/{identifier}", headers=AUTH)).json()
    assert "secret" not in shown and shown["url"] == "https://93.184.215.14/hooks"  # the secret is shown once
    listed = await (await client.get("/v1/subscriptions", headers=AUTH)).json()
    assert [s["id"] for s in listed["subscriptions"]] == [identifier]

    rotated = await (await client.post(f"/v1/subscriptions/{identifier}/rotate-secret", headers=AUTH)).json()
    assert rotated["secret"] != subscription["secret"] and rotated["previous_secrets_valid_for_seconds"] == 3600

    assert (await client.delete(f"/v1/subscriptions/{identifier}", headers=AUTH)).status == 204
    assert (await client.get(f"/v1/subscriptions/{identifier}", headers=AUTH)).status == 404


async def test_subscriptions_are_rebuilt_from_the_topic_by_a_new_process(broker) -> None:
    topic = f"subs-{uuid.uuid4().hex[:8]}"
    first, _ = await api_client(broker.bootstrap_servers, topic)
    try:
        created = await (
            await first.post("/v1/subscriptions", json={"url": "https://93.184.215.14/a"}, headers=AUTH)
        ).json()
        gone = await (
            await first.post("/v1/subscriptions", json={"url": "https://93.184.215.14/b"}, headers=AUTH)
        ).json()
        await first.delete(f"/v1/subscriptions/{gone['id']}", headers=AUTH)
    finally:
        await first.close()
    second, log = await api_client(broker.bootstrap_servers, topic)  # a restarted worker
    try:
        assert [s.id for s in log.registry.all()] == [created["id"]]
        assert log.registry.get(created["id"]).secrets[0].secret == created["secret"]
    finally:
        await second.close()


async def test_the_test_call_sends_a_signed_ping(broker) -> None:
    received: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=204)

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", hook)
    receiver = TestServer(receiver_app)
    await receiver.start_server()
    http, _ = await api_client(broker.bootstrap_servers, f"subs-{uuid.uuid4().hex[:8]}", allow_private=True)
    try:
        subscription = await (
            await http.post("/v1/subscriptions", json={"url": str(receiver.make_url("/hook"))}, headers=AUTH)
        ).json()
        answer = await (await http.post(f"/v1/subscriptions/{subscription['id']}/test", headers=AUTH)).json()
    finally:
        await http.close()
        await receiver.close()
    assert answer["delivered"] is True and answer["status"] == 204
    assert b'"type":"intent.ping"' in received[0]


async def test_the_openapi_document_describes_the_routes(client: TestClient) -> None:
    document = await (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        "/v1/subscriptions",
        "/v1/subscriptions/{id}",
        "/v1/subscriptions/{id}/rotate-secret",
        "/v1/subscriptions/{id}/test",
    }


async def test_the_openapi_document_describes_the_erasure_of_a_shopper() -> None:
    document = openapi_document(load_taxonomy().ids)
    erase = document["paths"]["/v1/shoppers/{shopper_id}"]["delete"]
    assert {"200", "202", "401"} <= set(erase["responses"])
    assert document["security"] == [{"bearer": []}]


async def nothing(*_: object) -> None: ...


async def links_of(bootstrap: str, topic: str) -> dict[str, str]:
    links: dict[str, str] = {}

    def follow(key: str, value: bytes | None) -> None:
        if value is None:
            links.pop(key, None)
        else:
            links[key] = value.decode()

    identities = CompactedTopic(bootstrap, topic, follow)
    await identities.start()
    await identities.stop()
    return links


async def test_erasing_a_shopper_needs_the_token_and_answers_what_was_removed_once_the_owner_applied_it(
    broker,
) -> None:
    bootstrap = broker.bootstrap_servers
    unique = uuid.uuid4().hex[:8]
    identities_topic = f"identities-{unique}"
    links = CompactedTopic(bootstrap, identities_topic, lambda *_: None)
    await links.start()
    for anonymous, user in (("anon-1", "ana"), ("anon-2", "bo"), ("ana", "ana-later")):
        await links.write(anonymous, user.encode())
    await links.stop()
    sessions, shoppers, caps = DictStore(), DictStore(), DictStore()
    shoppers.put("ana", Window(partition=1).to_bytes(), 1)
    sessions.put("ana|s1", Window(session_id="s1", partition=1).to_bytes(), 1)
    caps.put("ana", CapEntry(1, [("ic_1", 1.0)]).to_bytes(), 1)
    shoppers.put("bo", Window(partition=0).to_bytes(), 0)
    before = time.time()
    owned: set[int] = set()  # the owner of every partition is down at first
    erasure = ShopperErasure(
        bootstrap,
        f"erasures-{unique}",
        identities_topic,
        erase=lambda shopper: erase_state(
            shopper, sessions, shoppers, caps, idle_deliverer(), LatestChanges(DictStore())
        ),
        flush=nothing,
        owned_partitions=lambda: owned,
        partitions=lambda: 4,
        ready=lambda: True,
        wait_seconds=1.0,
    )
    await erasure.start()
    http, _ = await api_client(bootstrap, f"subs-{unique}", erasure=erasure)
    try:
        assert (await http.delete("/v1/shoppers/ana")).status == 401
        assert (await http.delete("/v1/shoppers/ana", headers={"Authorization": "Bearer wrong"})).status == 401
        assert "ana" in shoppers.data

        response = await http.delete("/v1/shoppers/ana", headers=AUTH)
        assert response.status == 202  # nobody owns the partition: the request waits on its topic
        answer = await response.json()
        assert answer["status"] == "pending" and answer["removed"]["identity_links"] == 2
        assert "ana" in shoppers.data

        owned.update(range(4))  # a worker takes the partitions over: it applies the pending request
        for _ in range(50):
            if "ana" not in shoppers.data and erasure.erased_after("ana", before):
                break
            await asyncio.sleep(0.1)
        assert set(shoppers.data) == {"bo"} and not sessions.data and not caps.data
        # an intent change detected before the erasure and delivered after it is dropped; a later one is not
        assert erasure.erased_after("ana", before) and not erasure.erased_after("ana", time.time() + 60)
        assert not erasure.erased_after("bo", before)

        response = await http.delete("/v1/shoppers/ana", headers=AUTH)  # again: nothing left to remove
        assert response.status == 200
        assert await response.json() == {
            "shopper_id": "ana",
            "status": "erased",
            "removed": {
                "shopper_windows": 0,
                "session_windows": 0,
                "frequency_caps": 0,
                "pending_deliveries": 0,
                "latest_changes": 0,
                "identity_links": 0,
            },
        }
    finally:
        await http.close()
        await erasure.stop()
    # the links that pointed at the shopper and the one its id owned are tombstoned; others stay
    assert await links_of(bootstrap, identities_topic) == {"anon-2": "bo"}


def idle_deliverer() -> Deliverer:
    """A deliverer with no pending delivery."""
    return Deliverer(
        SubscriptionRegistry(),
        DictStore(),
        schedule=(0.0,),
        timeout_seconds=1,
        endpoint_concurrency=1,
        allow_private_urls=True,
        dead_letter=nothing,
        disable=nothing,
    )
