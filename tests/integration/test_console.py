"""The console on a real broker and real workers, over HTTP (the browser tests drive its page)."""

from __future__ import annotations

import asyncio
import uuid
from http.cookies import SimpleCookie

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from intent.broker import EmbeddedBroker
from intent.console.sessions import COOKIE_NAME, CSRF_HEADER, ConsoleSessions
from intent.demo import MALFORMED, demo_events
from intent.kafka import wait_for_lag_zero
from intent.replay import replay
from tests.integration.conftest import API_TOKEN, Deployment, read_until
from tests.integration.console import live_view_until, log_in, wait_for_console

pytestmark = pytest.mark.integration

CATCH_UP_SECONDS = 150.0


async def until(condition, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.1)


async def test_a_session_opened_on_one_worker_is_known_to_another_and_a_logout_ends_it_on_both(
    broker: EmbeddedBroker,
) -> None:
    topic = f"console-sessions-{uuid.uuid4().hex[:8]}"
    one, two = (ConsoleSessions(broker.bootstrap_servers, topic, (API_TOKEN,), 3600) for _ in range(2))
    await one.start()
    await two.start()
    try:
        session = await one.open(API_TOKEN)
        await until(lambda: two.find(session.session_id) is not None)
        found = two.find(session.session_id)
        assert found is not None and found.token == API_TOKEN and found.csrf_token == session.csrf_token
        await two.end(found)
        await until(lambda: one.find(session.session_id) is None)
        later = ConsoleSessions(broker.bootstrap_servers, topic, (API_TOKEN,), 3600)  # a worker started after
        await later.start()
        assert later.find(session.session_id) is None
        await later.stop()
    finally:
        await one.stop()
        await two.stop()


async def test_a_session_ends_at_its_expiry_or_when_its_token_is_no_longer_configured(broker: EmbeddedBroker) -> None:
    topic = f"console-sessions-{uuid.uuid4().hex[:8]}"
    now = [1_000_000.0]
    sessions = ConsoleSessions(broker.bootstrap_servers, topic, (API_TOKEN,), 60, clock=lambda: now[0])
    rotated = ConsoleSessions(broker.bootstrap_servers, topic, ("the-next-token",), 60, clock=lambda: now[0])
    await sessions.start()
    await rotated.start()
    try:
        session = await sessions.open(API_TOKEN)
        assert sessions.find(session.session_id) is not None
        await until(lambda: len(rotated) == 1)  # it has read the session's record...
        assert rotated.find(session.session_id) is None  # ...and refuses it: its token is gone
        now[0] += 61
        assert sessions.find(session.session_id) is None
        assert await sessions.remove_expired() == 1
        await until(lambda: len(rotated) == 0)  # the tombstone reached the other worker
    finally:
        await sessions.stop()
        await rotated.stop()


async def test_the_sessions_topic_holds_neither_session_ids_nor_tokens(broker: EmbeddedBroker) -> None:
    topic = f"console-sessions-{uuid.uuid4().hex[:8]}"
    sessions = ConsoleSessions(broker.bootstrap_servers, topic, (API_TOKEN,), 3600)
    await sessions.start()
    try:
        session = await sessions.open(API_TOKEN)
    finally:
        await sessions.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        (message,) = (await consumer.getmany(partition, timeout_ms=5000))[partition]
    finally:
        await consumer.stop()
    raw = message.key + message.value
    assert session.session_id.encode() not in raw and API_TOKEN.encode() not in raw
    assert set(orjson.loads(message.value)) == {"token_mac", "expires_at"}


async def test_a_login_cookie_is_httponly_and_samesite_strict_the_api_ignores_it_and_changes_need_origin_and_csrf(
    deployment: Deployment,
) -> None:
    deployment.start_worker()
    base = f"http://127.0.0.1:{deployment.web_ports[0]}"
    await wait_for_console(base)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(f"{base}/console/api/login", json={"token": "not-the-token"}) as response:
            assert response.status == 401
        async with http.post(f"{base}/console/api/login", json={"token": API_TOKEN}) as response:
            assert response.status == 403  # a login another site would force on the browser: no Origin
        async with http.post(
            f"{base}/console/api/login", json={"token": API_TOKEN}, headers={"Origin": base}
        ) as response:
            assert response.status == 200
            cookie = SimpleCookie(response.headers["Set-Cookie"])[COOKIE_NAME]
            csrf = (await response.json())["csrf_token"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/console"
        assert not cookie["secure"]  # plain http here; behind a TLS proxy it is Secure (below)
        async with (
            aiohttp.ClientSession() as other,
            other.post(
                f"{base}/console/api/login",
                json={"token": API_TOKEN},
                headers={"Origin": base, "X-Forwarded-Proto": "https"},
            ) as response,
        ):
            assert SimpleCookie(response.headers["Set-Cookie"])[COOKIE_NAME]["secure"]

        async with http.get(f"{base}/v1/subscriptions") as response:
            assert response.status == 401  # the public API takes the bearer token only, never the cookie
        body = {"url": "http://127.0.0.1:9/hooks"}
        create = f"{base}/console/api/subscriptions"
        for headers in (
            {"Origin": base},  # no CSRF token
            {"Origin": base, CSRF_HEADER: "0" * 64},  # a wrong one
            {CSRF_HEADER: csrf},  # no origin
            {CSRF_HEADER: csrf, "Origin": "http://localhost:1"},  # another origin
            {CSRF_HEADER: csrf, "Referer": "http://evil.example/page"},
        ):
            async with http.post(create, json=body, headers=headers) as response:
                assert response.status == 403, headers
        async with http.get(f"{base}/v1/subscriptions", headers={"Authorization": f"Bearer {API_TOKEN}"}) as response:
            assert (await response.json())["subscriptions"] == []
        async with http.post(create, json=body, headers={CSRF_HEADER: csrf, "Origin": base}) as response:
            assert response.status == 201
            created = await response.json()
        assert created["secret"].startswith("whsec_")
        async with http.get(f"{base}/console/api/subscriptions") as response:
            (listed,) = (await response.json())["subscriptions"]
        assert listed["id"] == created["id"] and "secret" not in listed and "outcomes" in listed

        async with http.post(f"{base}/console/api/logout", headers={CSRF_HEADER: csrf, "Origin": base}) as response:
            assert response.status == 204
        async with http.get(f"{base}/console/api/session") as response:
            assert response.status == 401
        async with http.get(f"{base}/console/api/live") as response:
            assert response.status == 401


async def test_with_two_workers_each_ones_console_counts_every_change_and_dead_letter_of_the_deployment(
    deployment: Deployment,
) -> None:
    deployment.start_worker()
    deployment.start_worker()
    bases = [f"http://127.0.0.1:{port}" for port in deployment.web_ports]
    for base in bases:
        await wait_for_console(base)
    bootstrap = deployment.broker.bootstrap_servers
    await replay(demo_events(20), bootstrap, deployment.events_topic)
    await wait_for_lag_zero(bootstrap, deployment.app_id, deployment.events_topic, CATCH_UP_SECONDS)
    # every change on the topic, whichever worker detected it (the worker's own lag is zero now)
    changes = await read_until(bootstrap, deployment.changes_topic, lambda _: False, timeout=5.0)
    expected = len({change["id"] for change in changes})
    assert expected > 0
    async with aiohttp.ClientSession() as http:
        statuses = [await (await http.get(f"{base}/status")).json() for base in bases]
    owned = [set(status["partitions"]) for status in statuses]
    assert all(owned) and not owned[0] & owned[1], owned  # each worker owns a share of the partitions...

    for base in bases:  # ...and each one's console shows all of them
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await log_in(http, base)
            view = await live_view_until(
                http,
                base,
                lambda v: v["caught_up"]
                and v["totals"]["changes"] >= expected
                and v["totals"]["dead_letters"] >= len(MALFORMED),
                timeout=60,
            )
        assert view["totals"]["changes"] == expected, base
        assert view["totals"]["dead_letters"] == len(MALFORMED), base
        assert sum(row["count"] for row in view["by_intent"]) == expected
        listed = {change["shopper_id"] for change in view["changes"]}
        assert listed and len(listed) > 1
