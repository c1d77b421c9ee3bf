"""The detection path: a micro-batch of shopper events -> parsed, or dead-lettered with the reason ->
windows -> model -> detector -> IntentChanged records on the changes topic.

An input offset is committed only once everything its event caused is acknowledged by the broker:
the IntentChanged records, the changelog writes and the dead letters (`DetectionPath.handle_batch`
awaits them all). Faust's `take_events` acks a batch when the agent asks for the next one *or
leaves*, even by an exception, and its commit then passes the batch. So `committed_when_done` holds
one more reference on each event of the batch and gives it up only when the batch succeeded. When a
send fails (aiokafka has already retried it until its timeout), the agent takes no further batch and
the worker stops: its committed offsets stay before the failed batch, and whichever worker owns the
partitions next (this one, restarted) redoes the batch, with the same change ids. Going on instead
would process later events on windows that miss the failed batch's, and save them: the redo would
then skip the batch as already applied.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol

import faust
import orjson
from faust.types import EventT

from intent import observability as metrics
from intent.events import InvalidEvent, ShopperEvent, check_not_ahead, iso_time, parse_event
from intent.settings import Settings
from intent.tracking import IntentTracker

log = logging.getLogger(__name__)


class RecordSink(Protocol):
    """Where records go: a Faust topic. `send` returns once the record is queued; awaiting what it
    returns waits for the broker's acknowledgement (and raises if there is none)."""

    async def send(self, *, key: bytes | None, value: bytes) -> Awaitable[Any]: ...

    def get_topic_name(self) -> str: ...


class DetectionPath:
    """Turns each micro-batch of input events into intent changes and dead letters, and stores the
    windows once the broker has acknowledged everything the batch caused."""

    def __init__(
        self,
        settings: Settings,
        tracker: IntentTracker,
        changes: RecordSink,
        dead_letters: RecordSink,
        flush_changelogs: Callable[[], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.tracker = tracker
        self.changes = changes
        self.dead_letters = dead_letters
        self.flush_changelogs = flush_changelogs
        self.read_offsets: dict[int, int] = {}  # the last input offset read per partition (consumer lag)

    async def handle_batch(self, batch: list[EventT]) -> None:
        """Process `batch`; return once its changes, dead letters and windows are acknowledged, or raise."""
        metrics.EVENTS_IN.inc(len(batch))
        metrics.MICRO_BATCH_EVENTS.observe(len(batch))
        accepted: list[tuple[EventT, ShopperEvent]] = []
        deliveries = []  # of the dead letters and the changes: all acknowledged before the windows are saved
        for event, parsed in parse_batch(batch, self.settings, self.tracker.clock()):
            self.read_offsets[event.message.partition] = event.message.offset
            if isinstance(parsed, ShopperEvent):
                accepted.append((event, parsed))
            else:
                metrics.EVENTS_REJECTED.labels(metrics.reason_kind(parsed)).inc()
                deliveries.append(await dead_letter(self.dead_letters, event, parsed))
        tracker = self.tracker
        try:
            changes = tracker.process(
                [parsed for _, parsed in accepted],
                [(event.message.partition, event.message.offset) for event, _ in accepted],
            )
        except Exception:
            # The tracker stores nothing until `save`, so the batch can be redone event by event: each
            # event's windows are kept (unsaved) for the next events, and saved with the batch's below.
            log.exception("a micro-batch failed; processing its events one by one")
            changes = []
            for event, parsed in accepted:
                try:
                    changes += tracker.process([parsed], [(event.message.partition, event.message.offset)])
                    tracker.keep()
                except Exception as error:  # one bad event must not stop the stream
                    reason = f"processing failed: {error!r}"
                    deliveries.append(await dead_letter(self.dead_letters, event, reason))
        for change in changes:
            deliveries.append(await self.changes.send(key=change["shopper_id"].encode(), value=orjson.dumps(change)))
            metrics.INTENT_CHANGES.labels(change["to_intent"]["id"]).inc()
            log.info(
                "intent change %s: %s %s -> %s (%.2f)",
                change["id"],
                change["shopper_id"],
                (change["from_intent"] or {}).get("id", "none"),
                change["to_intent"]["id"],
                change["to_intent"]["confidence"],
                extra={
                    "ids": {
                        "change_id": change["id"],
                        "shopper_id": change["shopper_id"],
                        "message_id": change["trigger_message_id"],
                    }
                },
            )
        # Windows are stored only once the changes they caused are on the broker: see intent.tracking.
        await asyncio.gather(*deliveries)
        tracker.save()
        await self.flush_changelogs()  # acknowledged before this batch's offsets may be committed

    async def key_by_shopper(self, batch: list[EventT], keyed: RecordSink) -> None:
        """Copy each good event of `batch` to `keyed` with the shopper id as its key (dead-letter the
        others); return once the broker has acknowledged them all. For producers that do not key
        their events by shopper (`INTENT_REPARTITION_INPUT`)."""
        deliveries = []
        for event, parsed in parse_batch(batch, self.settings, self.tracker.clock()):
            if isinstance(parsed, ShopperEvent):
                deliveries.append(await keyed.send(key=parsed.shopper_id.encode(), value=event.value))
            else:
                deliveries.append(await dead_letter(self.dead_letters, event, parsed))
        await asyncio.gather(*deliveries)


def parse_batch(batch: list[EventT], settings: Settings, now: float) -> Iterator[tuple[EventT, ShopperEvent | str]]:
    """Each event with its parsed form, or the reason it was rejected; `now` is the worker's clock."""
    for event in batch:
        raw = event.value
        message = event.message
        if not isinstance(raw, bytes | bytearray) or not raw:
            yield event, "empty message"
        elif len(raw) > settings.max_event_bytes:
            yield event, f"event of {len(raw)} bytes is over the limit of {settings.max_event_bytes}"
        else:
            try:
                parsed = parse_event(raw, f"{message.topic}/{message.partition}/{message.offset}")
                check_not_ahead(parsed, now, settings.max_event_ahead_seconds)
            except InvalidEvent as error:
                yield event, error.reason
            else:
                yield event, parsed


@contextlib.asynccontextmanager
async def committed_when_done(app: faust.App, batch: list[EventT]) -> AsyncIterator[None]:
    """Let the offsets of `batch` be committed only if the block succeeds; if it raises, stop the
    worker and never return: no later batch is processed (the module docstring says why)."""
    for event in batch:
        event.message.incref()  # Faust's own ack at the next batch (or on the way out) is then not the last
    try:
        yield
    except Exception as error:
        log.critical(
            "a micro-batch's effects were not acknowledged: stopping the worker; it is redone from the "
            "last committed offset",
            exc_info=error,
        )
        for event in batch:
            # given up: no ack of it reaches the consumer, so it is never committed, and the stopping
            # consumer does not wait for it to be processed (Faust waits for every unacked message)
            event.message.acked = True
        await app.crash(error)
        await asyncio.Event().wait()  # until the stopping worker cancels the agent
    for event in batch:
        event.ack()


async def dead_letter(topic: RecordSink, event: EventT, reason: str) -> Awaitable[Any]:
    """Send the dead letter of `event`; returns its delivery, to await."""
    message = event.message
    raw = event.value if isinstance(event.value, bytes | bytearray) else b""
    record = {
        "reason": reason,
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": message.key.decode("utf-8", "replace") if isinstance(message.key, bytes) else None,
        "original_base64": base64.b64encode(raw).decode(),
        "rejected_at": iso_time(time.time()),
    }
    delivery = await topic.send(key=message.key if isinstance(message.key, bytes) else None, value=orjson.dumps(record))
    metrics.DEAD_LETTERS.labels(topic.get_topic_name()).inc()
    log.warning(
        "dead-lettered %s/%s/%s: %s",
        message.topic,
        message.partition,
        message.offset,
        reason,
        extra={"ids": {"topic": message.topic, "partition": message.partition, "offset": message.offset}},
    )
    return delivery
