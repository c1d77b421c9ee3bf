"""What an erasure removes from the worker's state, and nothing else (the stores are dicts here)."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from intent.erasure import KINDS, ErasureRequest, erase_state, partition_of
from intent.policy import CapEntry
from intent.read.latest import LatestChanges
from intent.stores import DictStore
from intent.webhooks.delivery import Deliverer, Delivery
from intent.webhooks.subscriptions import SubscriptionRegistry
from intent.window import Window


async def nothing(*_: object) -> None: ...


def deliverer(store: DictStore) -> Deliverer:
    return Deliverer(
        SubscriptionRegistry(),
        store,
        schedule=(0.0,),
        timeout_seconds=1,
        endpoint_concurrency=1,
        allow_private_urls=True,
        dead_letter=nothing,
        disable=nothing,
    )


def delivery(webhook: str, shopper: str) -> bytes:
    return Delivery(webhook, "sub_1", "http://127.0.0.1/h", {"id": "ic", "shopper_id": shopper}, 2, 0.0, 0.0).to_bytes()


def test_erasure_removes_the_shoppers_windows_cap_and_pending_deliveries_and_nothing_of_others() -> None:
    sessions, shoppers, caps, pending = DictStore(), DictStore(), DictStore(), DictStore()
    shoppers.put("ana", Window(partition=2).to_bytes(), 2)
    shoppers.put("ana|b", Window(partition=1).to_bytes(), 1)
    sessions.put("ana|-", Window(session_id="ana/m1", partition=2).to_bytes(), 2)
    sessions.put("ana|s9", Window(session_id="s9", partition=2).to_bytes(), 2)
    # shopper `ana|b`'s visits: their keys start with `ana|` too
    sessions.put("ana|b|-", Window(session_id="ana|b/m2", partition=1).to_bytes(), 1)
    sessions.put("ana|b|s1", Window(session_id="s1", partition=1).to_bytes(), 1)
    sessions.put("bo|s1", Window(session_id="s1", partition=0).to_bytes(), 0)
    caps.put("ana", CapEntry(2, [("ic_1", 1.0)]).to_bytes(), 2)
    caps.put("bo", CapEntry(0, [("ic_2", 1.0)]).to_bytes(), 0)
    pending.put("msg_1", delivery("msg_1", "ana"), 2)
    pending.put("msg_2", delivery("msg_2", "ana"), 2)
    pending.put("msg_3", delivery("msg_3", "bo"), 0)
    latest = LatestChanges(changes := DictStore())
    for shopper, partition in (("ana", 2), ("ana|b", 1)):
        latest.record({"id": "ic_1", "shopper_id": shopper, "detected_at": "2026-01-28T11:01:30Z"}, partition)

    removed = erase_state("ana", sessions, shoppers, caps, deliverer(pending), latest)

    assert removed == {
        "shopper_windows": 1,
        "session_windows": 2,
        "frequency_caps": 1,
        "pending_deliveries": 2,
        "latest_changes": 1,
    }
    assert set(shoppers.data) == {"ana|b"}
    assert set(sessions.data) == {"ana|b|-", "ana|b|s1", "bo|s1"}
    assert set(caps.data) == {"bo"}
    assert set(pending.data) == {"msg_3"}
    assert set(changes.data) == {"ana|b"}
    assert erase_state("ana", sessions, shoppers, caps, deliverer(pending), latest) == dict.fromkeys(removed, 0)


def test_an_erasure_is_applied_on_the_partition_kafkas_default_partitioner_gives_the_shopper() -> None:
    for shopper in ("ana", "story-coffee-tea-cold", "u-17", "ü"):
        expected = DefaultPartitioner()(shopper.encode(), list(range(4)), list(range(4)))
        assert partition_of(shopper, 4) == expected


@pytest.mark.parametrize("removed", [None, {"shopper_windows": 1, "session_windows": 2}])
def test_the_answer_names_every_kind_of_state(removed: dict[str, int] | None) -> None:
    answer = ErasureRequest("erasure_1", "ana", 2, 0.0, identity_links=3, removed=removed).answer()
    assert answer["status"] == ("pending" if removed is None else "erased")
    assert set(answer["removed"]) == set(KINDS) and answer["removed"]["identity_links"] == 3
