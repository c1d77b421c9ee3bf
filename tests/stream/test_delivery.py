"""The delivery path alone: what becomes of each intent change, from the erasure check and the
policy to the pending deliveries of the subscriptions that want it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from faust.types.tuples import Message

from intent.policy import DeliveryPolicy
from intent.read.latest import LatestChanges
from intent.settings import Settings
from intent.stores import DictStore
from intent.stream.delivery import ENQUEUED, NO_SUBSCRIPTION, SHOPPER_ERASED, DeliveryPath
from intent.webhooks.delivery import Delivery
from intent.webhooks.subscriptions import Subscription, SubscriptionLog

ERASED = "erased-shopper"


def change(number: int, shopper: str = "shopper-1", **fields: Any) -> dict[str, Any]:
    return {
        "id": f"ic_{number}",
        "shopper_id": shopper,
        "detected_at": "2026-12-02T10:00:00+00:00",
        "event_time": f"2026-12-02T09:{number:02d}:00+00:00",
        "to_intent": {"id": "cold_flu_care", "sensitive": False},
        "personalization_allowed": None,
        "evidence": [],
        "suggestions": [],
        **fields,
    }


@dataclass
class Sink:
    async def send(self, *, key: bytes | None, value: bytes) -> Any:
        raise AssertionError("no dead letter is expected here")

    def get_topic_name(self) -> str:
        return "webhook-dlq"


@pytest.fixture
def pending() -> DictStore:
    return DictStore()


@dataclass
class Flushes:
    """Counts the flushes of the path's stores, and fails them when told to."""

    count: int = 0
    failure: Exception | None = None

    async def flush(self) -> None:
        self.count += 1
        if self.failure is not None:
            raise self.failure


@pytest.fixture
def flushes() -> Flushes:
    return Flushes()


@pytest.fixture
def latest() -> DictStore:
    return DictStore()


@pytest.fixture
def path(tmp_path: Path, pending: DictStore, latest: DictStore, flushes: Flushes) -> DeliveryPath:
    # the first attempt a minute away: these tests look at what is stored, not at what is sent
    settings = Settings(data_dir=tmp_path, webhook_retry_schedule="60,60")
    return DeliveryPath(
        settings,
        SubscriptionLog("127.0.0.1:1", "subscriptions"),  # never started: its registry alone is read
        DeliveryPolicy(holdout_share=0.0, holdout_salt="s", cap_count=2, cap_seconds=3600, cap_max_shoppers=100),
        pending,
        DictStore(),
        LatestChanges(latest),
        Sink(),
        owned_partitions=lambda: {0, 1},
        erased_after=lambda shopper, detected_at: shopper == ERASED,
        flush=flushes.flush,
    )


def subscribe(path: DeliveryPath, *intents: str) -> Subscription:
    subscription = Subscription.create("https://example.com/hooks", intents, None)
    path.subscriptions.registry.apply(subscription.id, subscription.to_bytes())
    return subscription


def test_a_change_is_stored_as_one_pending_delivery_per_subscription_that_wants_its_intent(
    path: DeliveryPath, pending: DictStore
) -> None:
    wanted = [subscribe(path, "cold_flu_care"), subscribe(path)]  # no intents: every intent
    subscribe(path, "coffee_ritual")

    assert path.handle(change(1), partition=1) == ENQUEUED

    deliveries = [Delivery.from_bytes(raw) for _, raw in pending.items()]
    assert sorted(d.subscription_id for d in deliveries) == sorted(s.id for s in wanted)
    assert {d.partition for d in deliveries} == {1}


def test_a_change_nobody_subscribed_to_is_not_stored(path: DeliveryPath, pending: DictStore) -> None:
    subscribe(path, "coffee_ritual")

    assert path.handle(change(1), partition=0) == NO_SUBSCRIPTION
    assert pending.data == {}


def test_the_policy_decides_before_the_subscriptions_consent_then_the_cap(
    path: DeliveryPath, pending: DictStore
) -> None:
    subscribe(path)

    assert path.handle(change(1, personalization_allowed=False), 0) == "consent_refused"
    assert path.handle(change(2, to_intent={"id": "cold_flu_care", "sensitive": True}), 0) == (
        "sensitive_without_consent"
    )
    assert [path.handle(change(n), 0) for n in (3, 4, 5)] == [ENQUEUED, ENQUEUED, "frequency_cap"]
    assert path.handle(change(3), 0) == ENQUEUED  # the same change again: counted once, not resent
    assert len(pending.data) == 2


def test_a_change_of_an_erased_shopper_is_neither_stored_nor_counted(path: DeliveryPath, pending: DictStore) -> None:
    subscribe(path)

    assert path.handle(change(1, shopper=ERASED), 0) == SHOPPER_ERASED
    assert pending.data == {} and path.caps.get(ERASED) is None


def test_every_change_is_kept_for_the_read_api_delivered_or_not_but_not_an_erased_shoppers(
    path: DeliveryPath, latest: DictStore
) -> None:
    subscribe(path, "coffee_ritual")
    outcomes = [path.handle(change(1, personalization_allowed=False), 0), path.handle(change(2), 0)]
    assert outcomes == ["consent_refused", NO_SUBSCRIPTION]
    assert path.handle(change(3, shopper=ERASED), 0) == SHOPPER_ERASED
    assert [kept["id"] for kept in path.latest_changes.changes("shopper-1")] == ["ic_1", "ic_2"]
    assert set(latest.data) == {"shopper-1"}


@dataclass
class ChangeEvent:
    """What the path reads of a Faust event on the changes topic."""

    value: bytes
    message: Message


def events(*changes: dict[str, Any]) -> list[ChangeEvent]:
    return [
        ChangeEvent(raw, Message("intent-changes", 1, n, 0.0, 0, [], b"shopper-1", raw, None))
        for n, raw in enumerate(orjson.dumps(c) for c in changes)
    ]


async def test_a_batch_of_changes_returns_only_once_what_it_stored_is_flushed(
    path: DeliveryPath, pending: DictStore, flushes: Flushes
) -> None:
    subscribe(path)

    await path.handle_batch(events(change(1), change(2)))

    assert len(pending.data) == 2 and flushes.count == 1


async def test_a_batch_whose_writes_are_not_acknowledged_raises_so_its_offsets_are_not_committed(
    path: DeliveryPath, flushes: Flushes
) -> None:
    subscribe(path)
    flushes.failure = TimeoutError("not acknowledged")

    with pytest.raises(TimeoutError, match="not acknowledged"):
        await path.handle_batch(events(change(1)))
