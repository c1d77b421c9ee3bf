"""The read API on two real worker processes sharing the partitions on the embedded broker: a shopper
replayed through the broker is answered by her owner, and by the other worker through her owner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from intent.erasure import partition_of
from intent.kafka import wait_for_lag_zero
from intent.replay import replay
from intent.simulate import Simulator
from tests.integration.conftest import API_TOKEN, PARTITIONS, Deployment
from tests.integration.test_erasure import latest_records
from tests.integration.test_scale_out import GROUP_CHANGE_SECONDS, partitions_of, wait_for
from tests.integration.test_stream import STORY_SHOPPER, story_lines

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def read(port: int, path: str, headers: dict[str, str] = AUTH) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}", headers=headers) as response:
        return response.status, orjson.loads(await response.read())


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def send_keyed_by_a_device(bootstrap: str, topic: str, lines: list[bytes], avoid_partition: int) -> None:
    """Send `lines` keyed by one device id whose partition is not `avoid_partition` (the shopper's)."""
    device = next(f"device-{n}" for n in range(100) if partition_of(f"device-{n}", PARTITIONS) != avoid_partition)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for line in lines:
            await producer.send(topic, line, key=device.encode())
        await producer.flush()
    finally:
        await producer.stop()


@pytest.mark.parametrize("keyed_by", ["shopper", "device"])
async def test_a_replayed_shopper_is_answered_by_her_owner_and_by_the_other_worker_through_her_owner(
    deployment: Deployment, keyed_by: str
) -> None:
    """Keyed by shopper, she is owned by the worker of her events' partition; keyed by a device, the
    worker's own hop (INTENT_REPARTITION_INPUT) re-keys them and she is owned by the re-keyed one's."""
    bootstrap, app_id = deployment.broker.bootstrap_servers, deployment.app_id
    audits = [deployment.root / "audit-0.jsonl", deployment.root / "audit-1.jsonl"]
    for audit in audits:
        deployment.start_worker(
            INTENT_AUDIT_LOG_PATH=str(audit),
            INTENT_REPARTITION_INPUT=str(keyed_by == "device").lower(),
        )
    ports = deployment.web_ports

    async def split() -> bool:
        first, second = await partitions_of(ports[0]), await partitions_of(ports[1])
        return bool(first) and bool(second) and sorted(first + second) == list(range(PARTITIONS))

    await wait_for(split, "the two workers split the partitions")
    others = [orjson.dumps(event) for person in Simulator(seed=5).shoppers(6) for event in person.events]
    story_partition = partition_of(STORY_SHOPPER, PARTITIONS)
    topics = [deployment.events_topic, deployment.changes_topic]
    if keyed_by == "shopper":
        await replay(story_lines() + others, bootstrap, deployment.events_topic)
    else:
        await send_keyed_by_a_device(bootstrap, deployment.events_topic, story_lines() + others, story_partition)
        topics.insert(1, f"{app_id}-events-by-shopper")
    for topic in topics:
        await wait_for_lag_zero(bootstrap, app_id, topic, GROUP_CHANGE_SECONDS)

    # her owner is the worker holding the partition murmur2 gives her id: where her events were processed
    owner = 0 if story_partition in await partitions_of(ports[0]) else 1
    other = 1 - owner
    owner_url = f"http://127.0.0.1:{ports[owner]}"

    status, answer = await read(ports[owner], f"/v1/shoppers/{STORY_SHOPPER}/intent")
    assert status == 200, (answer, deployment.logs())
    assert answer["served_by"] == owner_url and answer["known"] is True and answer["holdout"] is False
    assert answer["committed_intent"]["id"] == "cold_flu_care"  # her events all allow personalization
    assert answer["current"][0]["id"] == "cold_flu_care"
    last = answer["last_change"]
    assert (last["from_intent"]["id"], last["to_intent"]["id"]) == ("coffee_ritual", "cold_flu_care")
    assert last["evidence"][-1]["category"] == "mint tea" and last["suggestions"][0]["product_id"] == "P0034"
    assert answer["shopper_window"]["events"] > 0 and answer["session_window"]["events"] > 0

    status, document = await read(ports[other], "/openapi.json", {})
    assert {"/v1/shoppers/{shopper_id}/intent", "/v1/shoppers/{shopper_id}/timeline"} <= set(document["paths"])
    status, routed = await read(ports[other], f"/v1/shoppers/{STORY_SHOPPER}/intent")
    assert status == 200 and routed == answer
    status, timeline = await read(ports[other], f"/v1/shoppers/{STORY_SHOPPER}/timeline")
    assert status == 200 and len(timeline["events"]) == answer["shopper_window"]["events"]
    assert [change["to_intent"]["id"] for change in timeline["changes"]] == ["coffee_ritual", "cold_flu_care"]

    for port in ports:
        assert (await read(port, "/v1/shoppers/nobody-at-all/intent"))[0] == 404
        assert (await read(port, f"/v1/shoppers/{STORY_SHOPPER}/intent", {}))[0] == 401
        wrong = {"Authorization": "Bearer not-the-token"}
        assert (await read(port, f"/v1/shoppers/{STORY_SHOPPER}/timeline", wrong))[0] == 401

    story_reads = [(audit, line) for audit in (0, 1) for line in audit_lines(audits[audit])]
    taken_by_other = [line for audit, line in story_reads if audit == other and line["shopper_id"] == STORY_SHOPPER]
    assert [(line["route"], line["forwarded"], line["forwarded_to"], line["status"]) for line in taken_by_other] == [
        ("/v1/shoppers/{shopper_id}/intent", False, [owner_url], 200),
        ("/v1/shoppers/{shopper_id}/timeline", False, [owner_url], 200),
    ]
    answered_for_other = [line for audit, line in story_reads if audit == owner and line["forwarded"]]
    assert {line["shopper_id"] for line in answered_for_other} >= {STORY_SHOPPER}
    assert all(line["forwarded_by"] == f"http://127.0.0.1:{ports[other]}" for line in answered_for_other)
    assert {line["status"] for _, line in story_reads if line["shopper_id"] == "nobody-at-all"} == {404}
    assert len([line for _, line in story_reads if line["status"] == 401]) == 0  # no credential, no read
    written = "".join(audit.read_text() for audit in audits)
    assert API_TOKEN not in written and "cold_flu_care" not in written

    # erased through the worker that does not own her: her last changes go with her windows
    async with (
        aiohttp.ClientSession() as http,
        http.delete(f"http://127.0.0.1:{ports[other]}/v1/shoppers/{STORY_SHOPPER}", headers=AUTH) as response,
    ):
        erased = await response.json()
    assert erased["status"] == "erased" and erased["removed"]["latest_changes"] == 1, erased
    for port in ports:
        assert (await read(port, f"/v1/shoppers/{STORY_SHOPPER}/intent"))[0] == 404
    changelog = await latest_records(bootstrap, f"{app_id}-latest-changes-changelog")
    assert STORY_SHOPPER in changelog and changelog[STORY_SHOPPER] is None
