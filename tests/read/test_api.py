"""The read API over real HTTP: two in-process workers' web servers, each with the real reader over its
own state (the story's windows on one of them) and the partition map their assignor would share.
The routing rules are pinned here; tests/integration/test_read_api.py runs two real worker processes
on the broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from intent.app import faust_settings
from intent.broker import free_port
from intent.erasure import partition_of
from intent.model import IntentModel
from intent.read.answers import ShopperReader
from intent.read.api import INTENT_ROUTE, TIMELINE_ROUTE, ShopperReadApi
from intent.read.audit import AuditLog, token_fingerprint
from intent.read.latest import LatestChanges
from intent.read.routing import FORWARDED_HEADER, Distribution, ShopperRouting
from intent.settings import Settings
from intent.stores import DictStore
from intent.suggest import Suggester
from tests.read.story import POLICY, STORY, story_calls, told

TOKEN = "read-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOPIC = "shopper-events"
PARTITIONS = 4
STORY_PARTITION = partition_of(STORY, PARTITIONS)


@dataclass
class Worker:
    url: str
    ready: bool = True


@dataclass
class Cluster:
    holder: Worker  # holds the story's state
    other: Worker
    distribution: dict[str, dict[str, list[int]]]
    audit_path: Path

    def audit(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.audit_path.read_text().splitlines()]

    def assign(self, story_owner: Worker, *others: str) -> None:
        """The partition map: the story's partition on `story_owner`, the rest on the other worker."""
        rest = self.other if story_owner is self.holder else self.holder
        self.distribution.clear()
        self.distribution[story_owner.url] = {TOPIC: [STORY_PARTITION]}
        self.distribution[rest.url] = {TOPIC: [p for p in range(PARTITIONS) if p != STORY_PARTITION]}
        for url in others:
            self.distribution[url] = {TOPIC: []}


@pytest.fixture
async def cluster(model: IntentModel, suggester: Suggester, tmp_path: Path) -> AsyncIterator[Cluster]:
    story_reader, _ = told(model, suggester, story_calls())
    empty_reader = ShopperReader(
        lambda: model,
        DictStore(),
        DictStore(),
        LatestChanges(DictStore()),
        lambda _: False,
        POLICY.session_idle_seconds,
    )
    distribution: dict[str, dict[str, list[int]]] = {}
    holder, other = Worker(f"http://127.0.0.1:{free_port()}"), Worker(f"http://127.0.0.1:{free_port()}")
    audit_path = tmp_path / "audit.jsonl"
    runners = []
    for worker, reader in ((holder, story_reader), (other, empty_reader)):
        routing = ShopperRouting(worker.url, lambda: distribution, lambda: TOPIC, lambda: PARTITIONS)
        api = ShopperReadApi(
            reader,
            routing,
            AuditLog(worker.url, audit_path),
            tokens=("another-token", TOKEN),
            ready=lambda worker=worker: worker.ready,
        )
        app = web.Application()
        api.add_routes(app)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", int(worker.url.rsplit(":", 1)[1])).start()
        runners.append(runner)
    built = Cluster(holder, other, distribution, audit_path)
    built.assign(holder)
    yield built
    for runner in runners:
        await runner.cleanup()


async def get(
    worker: Worker, path: str, headers: dict[str, str] = AUTH
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    async with aiohttp.ClientSession() as http, http.get(worker.url + path, headers=headers) as response:
        return response.status, orjson.loads(await response.read()), response.headers


async def test_any_worker_answers_with_the_owners_answer_and_each_writes_its_audit_line(cluster: Cluster) -> None:
    status, local, _ = await get(cluster.holder, f"/v1/shoppers/{STORY}/intent")
    assert status == 200 and local["served_by"] == cluster.holder.url
    assert local["committed_intent"]["id"] == "cold_flu_care"
    status, routed, _ = await get(cluster.other, f"/v1/shoppers/{STORY}/intent")
    assert status == 200 and routed == local
    status, timeline, _ = await get(cluster.other, f"/v1/shoppers/{STORY}/timeline")
    assert status == 200 and timeline["changes"][-1]["to_intent"]["id"] == "cold_flu_care"

    lines = cluster.audit()
    assert [(line["worker"], line["route"], line["forwarded"], line["forwarded_to"]) for line in lines] == [
        (cluster.holder.url, INTENT_ROUTE, False, []),
        (cluster.holder.url, INTENT_ROUTE, True, []),  # the owner answers the forwarded call ...
        (cluster.other.url, INTENT_ROUTE, False, [cluster.holder.url]),  # ... then the worker that took it
        (cluster.holder.url, TIMELINE_ROUTE, True, []),
        (cluster.other.url, TIMELINE_ROUTE, False, [cluster.holder.url]),
    ]
    for line in lines:
        assert line["logger"] == "intent.audit" and line["time"] and line["status"] == 200
        assert line["shopper_id"] == STORY and line["token"] == token_fingerprint(TOKEN)
    assert lines[1]["forwarded_by"] == cluster.other.url
    written = cluster.audit_path.read_text()
    assert TOKEN not in written and "cold_flu_care" not in written  # never the token, never the data


async def test_a_call_without_a_known_token_is_refused_and_reads_nothing(cluster: Cluster) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        for path in (f"/v1/shoppers/{STORY}/intent", f"/v1/shoppers/{STORY}/timeline"):
            status, body, _ = await get(cluster.other, path, headers)
            assert status == 401 and "cold" not in orjson.dumps(body).decode()
    assert not cluster.audit_path.exists() or cluster.audit() == []


async def test_an_unknown_shopper_is_a_404_after_every_worker_was_asked(cluster: Cluster) -> None:
    for worker in (cluster.holder, cluster.other):
        status, body, _ = await get(worker, "/v1/shoppers/nobody-at-all/intent")
        assert status == 404 and "error" in body
    assert {line["status"] for line in cluster.audit()} == {404}
    assert [line["forwarded"] for line in cluster.audit() if line["worker"] == cluster.holder.url].count(True) >= 1


async def test_a_shopper_on_another_partition_than_murmur2_says_is_found_by_asking_the_other_workers(
    cluster: Cluster,
) -> None:
    cluster.assign(cluster.other)  # as if a librdkafka producer had put her events elsewhere
    for worker in (cluster.holder, cluster.other):
        status, body, _ = await get(worker, f"/v1/shoppers/{STORY}/intent")
        assert status == 200 and body["served_by"] == cluster.holder.url


async def test_a_forwarded_call_is_answered_from_the_workers_own_state_and_never_forwarded_again(
    cluster: Cluster,
) -> None:
    marked = {**AUTH, FORWARDED_HEADER: "http://127.0.0.1:1"}
    status, _, _ = await get(cluster.other, f"/v1/shoppers/{STORY}/intent", marked)
    assert status == 404
    assert [(line["worker"], line["forwarded_to"]) for line in cluster.audit()] == [(cluster.other.url, [])]


async def test_while_the_owner_restores_its_tables_the_answer_is_503_with_retry_after(cluster: Cluster) -> None:
    cluster.holder.ready = False
    for worker in (cluster.holder, cluster.other):
        status, _, headers = await get(worker, f"/v1/shoppers/{STORY}/intent")
        assert status == 503 and int(headers["Retry-After"]) > 0


async def test_an_owner_that_does_not_answer_makes_it_503_not_404(cluster: Cluster) -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    cluster.distribution.clear()
    cluster.distribution.update({gone: {TOPIC: list(range(PARTITIONS))}, cluster.other.url: {TOPIC: []}})
    status, _, headers = await get(cluster.other, "/v1/shoppers/nobody-at-all/intent")
    assert status == 503 and "Retry-After" in headers


def test_the_owner_is_the_worker_holding_the_murmur2_partition_of_the_shopper_id() -> None:
    distribution: Distribution = {"http://a:1": {TOPIC: [0, 1]}, "http://b:1": {TOPIC: [2, 3], "other-topic": [0]}}
    routing = ShopperRouting("http://a:1", lambda: distribution, lambda: TOPIC, lambda: PARTITIONS)
    for shopper in ("ana", STORY, "u-17", "ü"):
        assert routing.owner(shopper) == ("http://a:1" if partition_of(shopper, PARTITIONS) < 2 else "http://b:1")
    assert ShopperRouting("http://a:1", dict, lambda: TOPIC, lambda: PARTITIONS).owner("ana") is None


def test_the_advertised_url_is_the_url_fausts_assignor_shares_with_the_other_workers() -> None:
    assert faust_settings(Settings(web_advertised_url="http://worker-7.internal:6066"))["canonical_url"] == (
        "http://worker-7.internal:6066"
    )
    assert "canonical_url" not in faust_settings(Settings())  # Faust's default: http://web_host:web_port
