"""Erasure, the right to be forgotten: `DELETE /v1/shoppers/{shopper_id}` removes what the worker
keeps about a shopper, with tombstones on every changelog and compacted topic, so a restart or a
rebalance does not bring it back.

What is removed: the shopper window (`shopper-windows`), the shopper's session windows
(`session-windows`, keyed `<shopper>|<session>`), the frequency-cap entry (`delivery-caps`), the
pending webhook deliveries of the shopper's intent changes (`webhook-deliveries`), her last intent
changes kept for the read API (`latest-changes`), and the identity
links (the compacted identities topic the collector follows) that point at the shopper or that the
shopper id owns (when it is an anonymousId). The answer counts what was removed, per kind.

Who removes it: the state lives on the worker that owns the shopper's partition, and the request may
reach any worker. The request is event-sourced: the worker that takes the call writes the identity
tombstones itself (the identities topic is one partition that any process can write), then writes
an erasure request, keyed by shopper, to a compacted topic (`INTENT_ERASURES_TOPIC`) that every
worker follows. The worker that owns the shopper's partition applies it, between two micro-batches
(never in the middle of one, whose windows would be saved back afterwards), and writes the request
back with what it removed; the worker that took the call waits for that and answers 200 with the
counts. A request whose owner is down, or in a rebalance, stays on the topic until a worker owns
the partition and applies it (after it has restored the tables); the call then answers 202 after
`INTENT_ERASURE_WAIT_SECONDS`. Unlike a read (`intent.read.routing`), an erasure is not forwarded
to the owner: a forwarded call fails when the owner is down or in a rebalance, and a request on the
topic outlives both.

The owner is found as producers find it: Kafka's default partitioner (murmur2 of the shopper id, the
key the collector writes), so producers must key events by shopper with it, as the Java client,
aiokafka and the collector do. Records of the input and intent-changes topics themselves are not
rewritten: they leave by the topics' retention, like every event log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Container
from dataclasses import asdict, dataclass

import orjson
from aiokafka.partitioner import murmur2

from intent.kafka import CompactedTopic
from intent.policy import CapEntry
from intent.read.latest import LatestChanges
from intent.stores import KeyValueStore
from intent.webhooks.delivery import Deliverer
from intent.window import Window

log = logging.getLogger(__name__)

# What an erasure removes, as its answer names it: the worker's state, then the identity links.
STATE_KINDS = ("shopper_windows", "session_windows", "frequency_caps", "pending_deliveries", "latest_changes")
KINDS = (*STATE_KINDS, "identity_links")
RETRY_SECONDS = 1.0  # how often pending requests are looked at again, when none arrives


def partition_of(shopper_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record keyed by `shopper_id`."""
    return (murmur2(shopper_id.encode()) & 0x7FFFFFFF) % partitions


@dataclass
class ErasureRequest:
    id: str
    shopper_id: str
    partition: int  # of the input topic: its owner applies the request
    requested_at: float
    identity_links: int  # removed by the worker that took the call, before it wrote the request
    removed: dict[str, int] | None = None  # what the owner removed, once applied
    applied_at: float | None = None

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes) -> ErasureRequest:
        return cls(**orjson.loads(raw))

    def answer(self) -> dict[str, object]:
        """The API's answer: what was removed, per kind, or that the owner has not applied it yet."""
        removed = {**dict.fromkeys(KINDS, 0), **(self.removed or {}), "identity_links": self.identity_links}
        return {
            "shopper_id": self.shopper_id,
            "status": "erased" if self.removed is not None else "pending",
            "removed": removed,
        }


def erase_state(
    shopper_id: str,
    sessions: KeyValueStore,
    shoppers: KeyValueStore,
    caps: KeyValueStore,
    deliverer: Deliverer,
    latest_changes: LatestChanges,
) -> dict[str, int]:
    """Remove the shopper's windows, frequency cap, pending deliveries and last intent changes; how
    many of each.

    Deletes go to the stores, which write the tombstones (the worker's tables, on their changelogs).
    """
    removed = dict.fromkeys(STATE_KINDS, 0)
    raw = shoppers.get(shopper_id)
    if raw is not None:
        shoppers.delete(shopper_id, Window.from_bytes(raw).partition)
        removed["shopper_windows"] = 1
    prefix = f"{shopper_id}|"
    for key, raw in sessions.items():
        if key.startswith(prefix):
            window = Window.from_bytes(raw)
            # `a|b|c` may be shopper `a|b`'s session `c`: the key names this shopper's session only
            # as `<shopper>|-` (a derived visit) or `<shopper>|<its sessionId>`
            if key in (f"{prefix}-", f"{prefix}{window.session_id}"):
                sessions.delete(key, window.partition)
                removed["session_windows"] += 1
    raw = caps.get(shopper_id)
    if raw is not None:
        caps.delete(shopper_id, CapEntry.from_bytes(raw).partition)
        removed["frequency_caps"] = 1
    removed["pending_deliveries"] = deliverer.forget_shopper(shopper_id)
    removed["latest_changes"] = latest_changes.erase(shopper_id)
    return removed


async def remove_identity_links(bootstrap_servers: str, topic: str, shopper_id: str) -> int:
    """Tombstone the anonymousId -> userId links that point at `shopper_id` or that it owns."""
    links: dict[str, str] = {}

    def follow(anonymous_id: str, user_id: bytes | None) -> None:
        if user_id is None:
            links.pop(anonymous_id, None)
        else:
            links[anonymous_id] = user_id.decode()

    identities = CompactedTopic(bootstrap_servers, topic, follow)
    await identities.start()  # returns once the whole topic is read
    try:
        doomed = [anonymous for anonymous, user in links.items() if shopper_id in (anonymous, user)]
        for anonymous_id in doomed:
            await identities.write(anonymous_id, None)
    finally:
        await identities.stop()
    return len(doomed)


class ShopperErasure:
    """Takes erasure calls (any worker) and applies erasure requests (the owner of the partition)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        identities_topic: str,
        *,
        erase: Callable[[str], dict[str, int]],
        flush: Callable[[], Awaitable[None]],
        owned_partitions: Callable[[], Container[int]],
        partitions: Callable[[], int],
        ready: Callable[[], bool],
        wait_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`erase(shopper_id)` removes the state (`erase_state` on the worker's tables); `flush`
        returns once its tombstones are with the producer; `partitions()` counts the input topic's
        partitions; `ready()` is False while the tables may not be restored (a rebalance)."""
        self.bootstrap_servers = bootstrap_servers
        self.identities_topic = identities_topic
        self._erase = erase
        self._flush = flush
        self._owned_partitions = owned_partitions
        self._partitions = partitions
        self._ready = ready
        self.wait_seconds = wait_seconds
        self.clock = clock
        # Held while a micro-batch is processed and while a request is applied: an erasure in the
        # middle of a batch would be undone when the batch saves the windows it loaded before.
        self.lock = asyncio.Lock()
        self._topic = CompactedTopic(bootstrap_servers, topic, self._follow)
        self._pending: dict[str, ErasureRequest] = {}  # not applied yet, by shopper
        self._applied_at: dict[str, float] = {}  # when each erased shopper was last erased
        self._answered: dict[str, asyncio.Future[ErasureRequest]] = {}  # calls waiting, by request id
        self._arrived = asyncio.Event()
        self._applier: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._topic.started

    async def start(self) -> None:
        await self._topic.start()
        self._applier = asyncio.create_task(self._apply_forever(), name="apply erasure requests")

    async def stop(self) -> None:
        if self._applier is not None:
            self._applier.cancel()
            await asyncio.gather(self._applier, return_exceptions=True)
        await self._topic.stop()

    async def request(self, shopper_id: str) -> ErasureRequest:
        """Erase `shopper_id`: the answer once its owner applied it, or the pending request after
        `wait_seconds` (it is applied when a worker owns the partition)."""
        links = await remove_identity_links(self.bootstrap_servers, self.identities_topic, shopper_id)
        request = ErasureRequest(
            f"erasure_{uuid.uuid4().hex}",
            shopper_id,
            partition_of(shopper_id, self._partitions()),
            self.clock(),
            links,
        )
        answered = self._answered[request.id] = asyncio.get_running_loop().create_future()
        try:
            await self._topic.write(shopper_id, request.to_bytes())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.wait_seconds):
                    return await answered
            return request
        finally:
            self._answered.pop(request.id, None)

    def _follow(self, shopper_id: str, raw: bytes | None) -> None:
        try:
            request = None if raw is None else ErasureRequest.from_bytes(raw)
        except (ValueError, TypeError):
            log.exception("skipping an unreadable erasure request for a shopper")
            return
        if request is None or request.removed is not None:
            pending = self._pending.get(shopper_id)
            if request is None or (pending is not None and pending.id == request.id):
                self._pending.pop(shopper_id, None)  # a request written meanwhile is still to apply
            if request is not None and request.applied_at is not None:
                self._applied_at[shopper_id] = request.applied_at
            answered = self._answered.get(request.id) if request is not None else None
            if answered is not None and not answered.done():
                answered.set_result(request)
        else:
            self._pending[shopper_id] = request
            self._arrived.set()

    def erased_after(self, shopper_id: str, detected_at: float) -> bool:
        """Whether the shopper was erased after an intent change detected at `detected_at`: such a
        change, still on its topic when the erasure was applied, must not be delivered."""
        return self._applied_at.get(shopper_id, float("-inf")) >= detected_at

    async def _apply_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRY_SECONDS):
                    await self._arrived.wait()
            self._arrived.clear()
            try:
                await self.apply_pending()
            except Exception:  # the broker did not take a write: the request stays pending
                log.exception("erasure requests not applied; trying again")

    async def apply_pending(self) -> None:
        """Apply the pending requests of the partitions this worker owns."""
        if not self._pending or not self._ready():
            return
        for shopper_id, request in list(self._pending.items()):
            if request.partition not in self._owned_partitions():
                continue
            async with self.lock:  # a rebalance may have come while the batch in progress ended
                if not self._ready() or request.partition not in self._owned_partitions():
                    return
                removed = self._erase(shopper_id)
                await self._flush()
            applied = ErasureRequest(**{**asdict(request), "removed": removed, "applied_at": self.clock()})
            await self._topic.write(shopper_id, applied.to_bytes())
            log.info("erased a shopper: %s", removed, extra={"ids": {"erasure_id": request.id}})
