"""The Faust app: topics, tables and the agent that wire the stages together.

shopper-events --(parse, validate)--> windows --> model --> detector --> intent-changes
                        \\--(rejected, with the reason)--> shopper-events-dlq

The windows are two Faust tables (sessions, shoppers) whose changelog topics make the state
event-sourced: a restarted or rebalanced worker rebuilds them before it consumes again.

An input offset is committed only once everything its event caused is acknowledged by the broker:
the IntentChanged records, the changelog writes and the dead letters (`handle_batch` awaits them
all). Faust's `take_events` acks a batch when the agent asks for the next one *or leaves*, even by
an exception, and its commit then passes the batch. So `_committed_when_done` holds one more
reference on each event of the batch and gives it up only when the batch succeeded. When a send
fails (aiokafka has already retried it until its timeout), the agent takes no further batch and the
worker stops: its committed offsets stay before the failed batch, and whichever worker owns the
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
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import faust
import mode
import orjson
from faust.serializers import codecs
from faust.types import TP, ConsumerT, EventT

from intent import observability as metrics
from intent.domain import (
    Domain,
    check_servable,
    effective_merchandising_rules,
    effective_window_policy,
    load_domain,
)
from intent.erasure import ShopperErasure, erase_state
from intent.events import InvalidEvent, ShopperEvent, check_not_ahead, iso_time, parse_event
from intent.model import IntentModel
from intent.policy import DeliveryPolicy, webhook_payload
from intent.read.answers import ShopperReader
from intent.read.api import add_read_api, openapi_paths
from intent.read.latest import LatestChanges
from intent.settings import Settings
from intent.suggest import CROWD_SPAN, CrowdCounts, MerchandisingRules, Suggester
from intent.tracking import IntentTracker
from intent.transport import IntentApp
from intent.webhooks.api import SubscriptionsApi
from intent.webhooks.delivery import Deliverer, PayloadTooLarge, parse_schedule
from intent.webhooks.subscriptions import Subscription, SubscriptionLog
from intent.window import Window

log = logging.getLogger(__name__)


class TableStore:
    """Bytes in a Faust table, written with an explicit changelog partition.

    Faust's own `table[key] = value` takes the partition from the event being processed; a
    micro-batch spans partitions, and the expiry sweep and webhook retries run outside any event,
    so each value records its input partition and is written to that changelog partition here.
    The changelog records go to the producer in order, a burst at a time, from one task: Faust's
    `send_changelog` queues each record through its producer buffer and a task of its own, which
    cost more per event than all of the detector's work (py-spy, benchmarks/throughput.py).
    `flush` returns once the broker has acknowledged them, and raises if it did not.
    """

    def __init__(self, table: faust.Table, owned_partitions: Any) -> None:
        self.table = table
        self._owned_partitions = owned_partitions
        self._unsent: list[tuple[int, bytes, bytes | None]] = []
        self._sending: asyncio.Task[None] | None = None
        # the deliveries of the records sent, until a flush sees them acknowledged (a failed one stays)
        self._deliveries: list[asyncio.Future[Any]] = []

    def get(self, key: str) -> bytes | None:
        return self.table.data.get(key)

    def put(self, key: str, value: bytes, partition: int) -> None:
        self.table.data[key] = value
        self._send(partition, key, value)

    def delete(self, key: str, partition: int) -> None:
        self.table.data.pop(key, None)
        if partition in self._owned_partitions():
            self._send(partition, key, None)

    def items(self) -> Iterator[tuple[str, bytes]]:
        return iter(list(self.table.data.items()))

    async def flush(self) -> None:
        """Return once the broker has acknowledged every record written so far; raise the error of
        one it did not acknowledge (again at every later flush: the table and its changelog differ)."""
        while self._sending is not None:
            await asyncio.shield(self._sending)
        deliveries = list(self._deliveries)
        if deliveries:
            await asyncio.wait(deliveries)  # unlike gather, never cancels them if this flush is cancelled
            for delivery in deliveries:
                delivery.result()
            acknowledged = set(deliveries)
            self._deliveries = [delivery for delivery in self._deliveries if delivery not in acknowledged]

    def _send(self, partition: int, key: str, value: bytes | None) -> None:
        # keys as the table's serializer writes them (JSON strings), so recovery reads them back
        self._unsent.append((partition, codecs.dumps(self.table.key_serializer, key), value))
        if self._sending is None:
            self._sending = asyncio.ensure_future(self._send_unsent())

    async def _send_unsent(self) -> None:
        producer = self.table.app.producer
        topic = self.table.changelog_topic.get_topic_name()
        try:
            while self._unsent:
                records, self._unsent = self._unsent, []
                for partition, key, value in records:
                    delivery = await producer.send(topic, key, value, partition, None, None)
                    self._deliveries.append(asyncio.ensure_future(delivery))
        except Exception:  # the producer failed: Faust crashes the worker on its own send errors too
            log.exception("changelog records of %s not sent", topic)
            raise
        finally:
            self._sending = None


@dataclass
class IntentWorker:
    """The Faust app with handles on what tests, benchmarks and the CLI need."""

    app: faust.App
    settings: Settings
    tracker: IntentTracker
    events_topic: faust.TopicT
    changes_topic: faust.TopicT
    dead_letter_topic: faust.TopicT
    sessions: faust.Table
    shoppers: faust.Table
    subscriptions: SubscriptionLog
    deliverer: Deliverer
    policy: DeliveryPolicy
    crowd: CrowdCounts
    stores: list[TableStore] = field(default_factory=list)  # every table the worker writes
    read_offsets: dict[int, int] = field(default_factory=dict)  # last input offset per partition

    async def flush_changelogs(self) -> None:
        """Return once every table write made so far is acknowledged by the broker (or raise)."""
        for store in self.stores:
            await store.flush()


def faust_settings(settings: Settings) -> dict[str, Any]:
    """Faust settings for this workload: raw bytes everywhere (we parse with orjson ourselves),
    memory tables rebuilt from their changelogs, and consumer-group timing that lets a worker
    join quickly."""
    return {
        "broker": settings.kafka_url,
        "store": "memory://",
        "datadir": str(settings.data_dir),
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": 1,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "consumer_auto_offset_reset": "earliest",
        "stream_buffer_maxsize": 16_384,
        "broker_max_poll_records": 2_000,
        "broker_commit_every": 10_000,
        "broker_commit_interval": 1.0,
        "broker_session_timeout": settings.group_session_timeout_seconds,
        "broker_heartbeat_interval": 1.0,
        "broker_rebalance_timeout": 30.0,
        "producer_linger": 0.005,
        "table_standby_replicas": 0,
        "web_enabled": True,
        **({"canonical_url": settings.web_advertised_url} if settings.web_advertised_url else {}),
    }


def create_worker(settings: Settings, model: IntentModel | None = None, domain: Domain | None = None) -> IntentWorker:
    """The worker for `settings`; raises ModelError or DomainError (with what to do) when the model
    cannot be loaded or was trained on another domain's intents."""
    model = model or IntentModel.load(settings.model_dir, settings.inference_threads)
    domain = domain or load_domain(settings.domain_dir)
    coverage = check_servable(model, domain)
    log.log(
        logging.WARNING if coverage.unmapped else logging.INFO,
        "domain %s (%s), the category map on the catalogue: %s",
        domain.name,
        domain.directory,
        coverage.summary("products"),
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = IntentApp(
        settings.app_id,
        fetch_max_wait_seconds=settings.fetch_max_wait_seconds,
        fail_produce_on_call=settings.test_fail_produce_on_call,
        **faust_settings(settings),
    )
    events_topic = app.topic(settings.events_topic, key_type=bytes, value_type=bytes)
    changes_topic = app.topic(settings.changes_topic, key_type=bytes, value_type=bytes)
    dead_letter_topic = app.topic(settings.dead_letter_topic, key_type=bytes, value_type=bytes)
    sessions = app.Table("session-windows", key_type=str, value_type=bytes)
    shoppers = app.Table("shopper-windows", key_type=str, value_type=bytes)

    def owned_partitions() -> set[int]:
        return _assigned_partitions(app, source)

    policy = effective_window_policy(settings, domain)
    crowd = CrowdCounts(settings.crowd_half_life_hours * 3600)
    suggester = Suggester(
        domain.taxonomy,
        domain.catalogue,
        MerchandisingRules.load(effective_merchandising_rules(settings, domain)),
        crowd,
        settings.suggestions_max,
    )
    delivery_policy = DeliveryPolicy(
        settings.holdout_share,
        settings.holdout_salt,
        settings.frequency_cap_count,
        settings.frequency_cap_hours * 3600,
        settings.frequency_cap_max_shoppers,
    )

    def observe_event(event: ShopperEvent, window: Window) -> None:
        crowd.learn(event, window.tail(CROWD_SPAN))

    def enrich_change(
        change: dict[str, Any], window_events: list[dict[str, Any]], category_scores: Mapping[str, float] | None
    ) -> dict[str, Any]:
        holdout = delivery_policy.in_holdout(change["shopper_id"])
        suggestions = (
            []
            if holdout
            else suggester.suggest(change["to_intent"]["id"], window_events, window_events[-1]["t"], category_scores)
        )
        return webhook_payload(change, suggestions, holdout)

    tracker = IntentTracker(
        model,
        policy,
        session_store := TableStore(sessions, owned_partitions),
        shopper_store := TableStore(shoppers, owned_partitions),
        observe_inference=metrics.INFERENCE_SECONDS.observe,
        observe_event=observe_event,
        enrich_change=enrich_change,
        max_windows=settings.max_tracked_shoppers,
    )
    metrics.ACTIVE_SESSIONS.set_function(lambda: len(sessions.data))
    metrics.ACTIVE_SHOPPERS.set_function(lambda: len(shoppers.data))
    subscriptions = SubscriptionLog(settings.bootstrap_servers, settings.subscriptions_topic)
    pending = app.Table("webhook-deliveries", key_type=str, value_type=bytes)
    caps = app.Table("delivery-caps", key_type=str, value_type=bytes)
    webhook_dead_letters = app.topic(settings.webhook_dead_letter_topic, key_type=bytes, value_type=bytes)

    def owned_change_partitions() -> set[int]:
        return _assigned_partitions(app, changes_topic)

    async def dead_letter_delivery(record: dict[str, Any]) -> None:
        # returns once the broker has it: only then does the deliverer forget the pending delivery
        await (await webhook_dead_letters.send(key=record["subscription_id"].encode(), value=orjson.dumps(record)))
        metrics.DEAD_LETTERS.labels(settings.webhook_dead_letter_topic).inc()

    async def disable(subscription: Subscription, reason: str) -> None:
        await subscriptions.put(replace(subscription, disabled_reason=reason))
        log.warning(
            "disabled subscription %s: %s", subscription.id, reason, extra={"ids": {"subscription_id": subscription.id}}
        )

    deliverer = Deliverer(
        subscriptions.registry,
        pending_store := TableStore(pending, owned_change_partitions),
        schedule=parse_schedule(settings.webhook_retry_schedule),
        timeout_seconds=settings.webhook_timeout_seconds,
        endpoint_concurrency=settings.webhook_endpoint_concurrency,
        allow_private_urls=settings.webhook_allow_private_urls,
        dead_letter=dead_letter_delivery,
        disable=disable,
        owned_partitions=owned_change_partitions,  # after a rebalance, the new owner retries
    )
    caps_store = TableStore(caps, owned_change_partitions)
    # the read API's last changes per shopper, written by the delivery agent (intent.read.latest)
    latest_changes_store = TableStore(
        app.Table("latest-changes", key_type=str, value_type=bytes), owned_change_partitions
    )
    latest_changes = LatestChanges(latest_changes_store)
    erasure = ShopperErasure(
        settings.bootstrap_servers,
        settings.erasures_topic,
        settings.identities_topic,
        erase=lambda shopper: erase_state(shopper, session_store, shopper_store, caps_store, deliverer, latest_changes),
        flush=lambda: worker.flush_changelogs(),
        owned_partitions=owned_partitions,
        partitions=lambda: app.consumer.topic_partitions(source.get_topic_name()) or settings.topic_partitions,
        ready=lambda: not app.rebalancing,
        wait_seconds=settings.erasure_wait_seconds,
    )
    worker = IntentWorker(
        app,
        settings,
        tracker,
        events_topic,
        changes_topic,
        dead_letter_topic,
        sessions,
        shoppers,
        subscriptions,
        deliverer,
        delivery_policy,
        crowd,
        [session_store, shopper_store, pending_store, caps_store, latest_changes_store],
    )

    @app.agent(changes_topic, name="deliver-intent-changes")
    async def deliver_intent_changes(stream: faust.StreamT) -> None:
        async for event in stream.events():
            change = orjson.loads(event.value)
            shopper = change["shopper_id"]
            # the cap counts in event time, so a replay of last week is capped like last week was
            event_time = datetime.fromisoformat(change["event_time"]).timestamp()
            if erasure.erased_after(shopper, datetime.fromisoformat(change["detected_at"]).timestamp()):
                metrics.DELIVERIES_SUPPRESSED.labels("shopper_erased").inc()
                continue  # detected before the shopper was erased: nothing of it is kept or sent
            latest_changes.record(change, event.message.partition)
            decision = delivery_policy.decide(change, caps_store, event_time, event.message.partition)
            if not decision.deliver:
                log.info(
                    "intent change %s not delivered: %s",
                    change["id"],
                    decision.reason,
                    extra={"ids": {"change_id": change["id"], "shopper_id": shopper}},
                )
                continue
            matching = subscriptions.registry.matching(change["to_intent"]["id"])
            if matching:
                try:
                    deliverer.enqueue(change, matching, event.message.partition)
                except PayloadTooLarge as error:  # cannot happen for our own payloads (trimmed)
                    log.error("intent change %s not delivered: %s", change["id"], error)

    @app.service
    class WebhookDelivery(mode.Service):
        """Follows the subscriptions and runs the webhook attempts, once the tables are recovered."""

        async def on_start(self) -> None:
            await subscriptions.start()
            await deliverer.start()
            await erasure.start()

        async def on_stop(self) -> None:
            await erasure.stop()
            await deliverer.stop()
            await subscriptions.stop()
            await worker.flush_changelogs()

    SubscriptionsApi(
        subscriptions,
        deliverer,
        tokens=settings.api_token_list,
        intent_ids=model.intent_ids,
        allow_private_urls=settings.webhook_allow_private_urls,
        secret_overlap_seconds=settings.webhook_secret_overlap_seconds,
        clock=time.time,
        erasure=erasure,
        more_paths=openapi_paths(),
    ).add_routes(app.web.web_app)

    source = events_topic
    if settings.repartition_input:
        source = app.topic(f"{settings.app_id}-events-by-shopper", key_type=bytes, value_type=bytes)

        @app.agent(events_topic, name="key-events-by-shopper")
        async def key_events_by_shopper(stream: faust.StreamT) -> None:
            async for batch in stream.take_events(settings.batch_max_events, settings.batch_max_seconds):
                async with _committed_when_done(app, batch):
                    deliveries = []
                    for event, parsed in _parse_batch(batch, settings, tracker.clock()):
                        if isinstance(parsed, ShopperEvent):
                            deliveries.append(await source.send(key=parsed.shopper_id.encode(), value=event.value))
                        else:
                            deliveries.append(await _dead_letter(dead_letter_topic, event, parsed))
                    await asyncio.gather(*deliveries)

    @app.agent(source, name="detect-intent")
    async def detect_intent(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(settings.batch_max_events, settings.batch_max_seconds):
            async with _committed_when_done(app, batch), erasure.lock:  # an erasure waits for a whole batch
                await handle_batch(worker, batch)

    @app.timer(interval=5.0)
    async def sample_consumer_lag() -> None:
        for partition in owned_partitions():
            highwater = _known_highwater(app.consumer, TP(source.get_topic_name(), partition))
            if highwater is not None:
                read = worker.read_offsets.get(partition, -1)
                metrics.CONSUMER_LAG.labels(str(partition)).set(max(0, highwater - read - 1))

    def readiness() -> dict[str, bool]:
        return {
            "model_loaded": tracker.model_ready,
            "broker_connected": app.producer.started and not app.rebalancing,
            "partitions_assigned": bool(owned_partitions()),
        }

    def status() -> dict[str, Any]:
        return {
            "app_id": settings.app_id,
            "model_version": tracker.model.version,
            "partitions": sorted(owned_partitions()),
            "sessions": len(sessions.data),
            "shoppers": len(shoppers.data),
            "events": tracker.stats.events,
        }

    metrics.add_health_routes(app.web.web_app, readiness, status)
    add_read_api(
        app,
        settings,
        ShopperReader(
            lambda: tracker.model,
            session_store,
            shopper_store,
            latest_changes,
            delivery_policy.in_holdout,
            policy.session_idle_seconds,
        ),
        topic=source.get_topic_name,
        partitions=lambda: app.consumer.topic_partitions(source.get_topic_name()) or settings.topic_partitions,
    )

    @app.timer(interval=settings.expiry_check_seconds)
    async def expire_windows() -> None:
        sessions_removed, shoppers_removed = tracker.expire()
        delivery_policy.expire_caps(caps_store, time.time())
        latest_changes.expire(time.time(), policy.shopper_days * 86400, settings.max_tracked_shoppers)
        await worker.flush_changelogs()
        if sessions_removed or shoppers_removed:
            log.info("expired %d idle sessions and %d shopper windows", sessions_removed, shoppers_removed)

    return worker


def _parse_batch(batch: list[EventT], settings: Settings, now: float) -> Iterator[tuple[EventT, ShopperEvent | str]]:
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
async def _committed_when_done(app: faust.App, batch: list[EventT]) -> AsyncIterator[None]:
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


def _assigned_partitions(app: faust.App, topic: faust.TopicT) -> set[int]:
    """The partitions of `topic` this worker owns now (the same numbers for every co-partitioned topic)."""
    name = topic.get_topic_name()
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == name}


def _known_highwater(consumer: ConsumerT, tp: TP) -> int | None:
    """The end offset of `tp` as of the consumer's last fetch, or None while it is unknown.

    Timers keep running through a rebalance, so a partition the assignor lists may not be fetched
    yet (no highwater) or may not be assigned to the consumer's thread at this instant (aiokafka
    asserts it is). The caller skips it until a later tick: an exception in a timer stops the worker.
    """
    try:
        return consumer.highwater(tp)
    except AssertionError:
        return None


async def handle_batch(worker: IntentWorker, batch: list[EventT]) -> None:
    metrics.EVENTS_IN.inc(len(batch))
    metrics.MICRO_BATCH_EVENTS.observe(len(batch))
    accepted: list[tuple[EventT, ShopperEvent]] = []
    deliveries = []  # of the dead letters and the changes: all acknowledged before the windows are saved
    for event, parsed in _parse_batch(batch, worker.settings, worker.tracker.clock()):
        worker.read_offsets[event.message.partition] = event.message.offset
        if isinstance(parsed, ShopperEvent):
            accepted.append((event, parsed))
        else:
            metrics.EVENTS_REJECTED.labels(metrics.reason_kind(parsed)).inc()
            deliveries.append(await _dead_letter(worker.dead_letter_topic, event, parsed))
    tracker = worker.tracker
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
                deliveries.append(await _dead_letter(worker.dead_letter_topic, event, reason))
    for change in changes:
        deliveries.append(
            await worker.changes_topic.send(key=change["shopper_id"].encode(), value=orjson.dumps(change))
        )
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
    await worker.flush_changelogs()  # acknowledged before this batch's offsets may be committed


async def _dead_letter(topic: faust.TopicT, event: EventT, reason: str) -> Awaitable[Any]:
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
