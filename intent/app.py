"""The Faust app: topics, tables and the agents that wire the stages together.

shopper-events --(parse, validate)--> windows --> model --> detector --> intent-changes
                        \\--(rejected, with the reason)--> shopper-events-dlq
intent-changes --(consent, holdout, cap, subscriptions)--> webhook deliveries --> receivers

The windows are two Faust tables (sessions, shoppers) whose changelog topics make the state
event-sourced: a restarted or rebalanced worker rebuilds them before it consumes again.

Each path has a home of its own, readable and testable without the others: the detection path
(`intent.stream.detection`, with the commit guarantee), the delivery path (`intent.stream.delivery`),
the web routes (`intent.stream.routes`) and the tables (`intent.stream.tables`). This module builds
them and hands each agent, timer and service its part.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import faust
import mode
from faust.types import TP, ConsumerT

from intent import observability as metrics
from intent.console import Console
from intent.domain import (
    Domain,
    check_servable,
    effective_merchandising_rules,
    effective_window_policy,
    load_domain,
)
from intent.erasure import ShopperErasure, erase_state
from intent.events import ShopperEvent
from intent.model import IntentModel
from intent.policy import DeliveryPolicy, webhook_payload
from intent.read.answers import ShopperReader
from intent.read.api import add_read_api, openapi_paths
from intent.read.latest import LatestChanges
from intent.settings import Settings
from intent.stream.delivery import DeliveryPath
from intent.stream.detection import DetectionPath, committed_when_done
from intent.stream.routes import WorkerRoutes
from intent.stream.tables import TableStore, state_table
from intent.suggest import CROWD_SPAN, CrowdCounts, MerchandisingRules, Suggester
from intent.tracking import IntentTracker
from intent.transport import IntentApp
from intent.webhooks.api import SubscriptionsApi
from intent.webhooks.subscriptions import SubscriptionLog
from intent.window import Window

log = logging.getLogger(__name__)


@dataclass
class IntentWorker:
    """The Faust app with handles on what tests, benchmarks and the CLI need."""

    app: faust.App
    settings: Settings
    tracker: IntentTracker
    detection: DetectionPath
    delivery: DeliveryPath
    sessions: faust.Table
    shoppers: faust.Table


def faust_settings(settings: Settings) -> dict[str, Any]:
    """Faust settings for this workload: raw bytes everywhere (we parse with orjson ourselves),
    tables in memory or RocksDB (`INTENT_STATE_STORE`) rebuilt from their changelogs, and
    consumer-group timing that lets a worker join quickly."""
    return {
        "broker": settings.kafka_url,
        "store": f"{settings.state_store}://",
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

    # Topics and tables. The input may be re-keyed by shopper first (`INTENT_REPARTITION_INPUT`).
    events_topic = app.topic(settings.events_topic, key_type=bytes, value_type=bytes)
    source = events_topic
    if settings.repartition_input:
        source = app.topic(f"{settings.app_id}-events-by-shopper", key_type=bytes, value_type=bytes)
    changes_topic = app.topic(settings.changes_topic, key_type=bytes, value_type=bytes)
    dead_letter_topic = app.topic(settings.dead_letter_topic, key_type=bytes, value_type=bytes)
    webhook_dead_letters = app.topic(settings.webhook_dead_letter_topic, key_type=bytes, value_type=bytes)
    sessions = state_table(app, "session-windows", settings)
    shoppers = state_table(app, "shopper-windows", settings)
    pending = state_table(app, "webhook-deliveries", settings)
    caps = state_table(app, "delivery-caps", settings)
    latest = state_table(app, "latest-changes", settings)  # for the read API

    def owned_partitions() -> set[int]:
        return _assigned_partitions(app, source)

    def owned_change_partitions() -> set[int]:
        return _assigned_partitions(app, changes_topic)

    session_store = TableStore(sessions, owned_partitions)
    shopper_store = TableStore(shoppers, owned_partitions)
    pending_store = TableStore(pending, owned_change_partitions)
    caps_store = TableStore(caps, owned_change_partitions)
    latest_store = TableStore(latest, owned_change_partitions)
    latest_changes = LatestChanges(latest_store)

    # The detection path's parts: windows, model, detector, and the suggestions a change carries.
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

    window_policy = effective_window_policy(settings, domain)
    tracker = IntentTracker(
        model,
        window_policy,
        session_store,
        shopper_store,
        observe_inference=metrics.INFERENCE_SECONDS.observe,
        observe_event=observe_event,
        enrich_change=enrich_change,
        max_windows=settings.max_tracked_shoppers,
    )
    metrics.ACTIVE_SESSIONS.set_function(lambda: len(session_store))
    metrics.ACTIVE_SHOPPERS.set_function(lambda: len(shopper_store))
    stores = [session_store, shopper_store, pending_store, caps_store, latest_store]

    async def flush_changelogs() -> None:
        for store in stores:
            await store.flush()

    async def flush_delivery_state() -> None:
        await pending_store.flush()
        await caps_store.flush()
        await latest_store.flush()

    detection = DetectionPath(settings, tracker, changes_topic, dead_letter_topic, flush_changelogs)
    subscriptions = SubscriptionLog(settings.bootstrap_servers, settings.subscriptions_topic)
    # the console (intent/console/): its routes, live feed and the record of webhook attempts
    console = Console(settings, domain.taxonomy.intents, model.version, domain.name)
    delivery = DeliveryPath(
        settings,
        subscriptions,
        delivery_policy,
        pending_store,
        caps_store,
        latest_changes,
        webhook_dead_letters,
        owned_change_partitions,
        erased_after=lambda shopper, detected_at: erasure.erased_after(shopper, detected_at),
        flush=flush_delivery_state,
        on_attempt=console.attempts.record,
    )
    erasure = ShopperErasure(
        settings.bootstrap_servers,
        settings.erasures_topic,
        settings.identities_topic,
        erase=lambda shopper: erase_state(
            shopper, session_store, shopper_store, caps_store, delivery.deliverer, latest_changes
        ),
        flush=flush_changelogs,
        owned_partitions=owned_partitions,
        partitions=lambda: app.consumer.topic_partitions(source.get_topic_name()) or settings.topic_partitions,
        ready=lambda: not app.rebalancing,
        wait_seconds=settings.erasure_wait_seconds,
    )

    # Agents, timers and services: each hands its work to a path.
    if settings.repartition_input:

        @app.agent(events_topic, name="key-events-by-shopper")
        async def key_events_by_shopper(stream: faust.StreamT) -> None:
            async for batch in stream.take_events(settings.batch_max_events, settings.batch_max_seconds):
                async with committed_when_done(app, batch):
                    await detection.key_by_shopper(batch, source)

    @app.agent(source, name="detect-intent")
    async def detect_intent(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(settings.batch_max_events, settings.batch_max_seconds):
            async with committed_when_done(app, batch), erasure.lock:  # an erasure waits for a whole batch
                await detection.handle_batch(batch)

    @app.agent(changes_topic, name="deliver-intent-changes")
    async def deliver_intent_changes(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(settings.batch_max_events, settings.batch_max_seconds):
            async with committed_when_done(app, batch):
                await delivery.handle_batch(batch)

    @app.service
    class WebhookDelivery(mode.Service):
        """Follows the subscriptions and erasures and runs the webhook attempts, once the tables are recovered."""

        async def on_start(self) -> None:
            await subscriptions.start()
            await delivery.deliverer.start()
            await erasure.start()

        async def on_stop(self) -> None:
            await erasure.stop()
            await delivery.deliverer.stop()
            await subscriptions.stop()
            await flush_changelogs()

    @app.timer(interval=5.0)
    async def sample_consumer_lag() -> None:
        for partition in owned_partitions():
            highwater = _known_highwater(app.consumer, TP(source.get_topic_name(), partition))
            if highwater is not None:
                read = detection.read_offsets.get(partition, -1)
                metrics.CONSUMER_LAG.labels(str(partition)).set(max(0, highwater - read - 1))

    @app.timer(interval=settings.expiry_check_seconds)
    async def expire_windows() -> None:
        sessions_removed, shoppers_removed = tracker.expire()
        delivery_policy.expire_caps(caps_store, time.time())
        latest_changes.expire(time.time(), window_policy.shopper_days * 86400, settings.max_tracked_shoppers)
        await flush_changelogs()
        if sessions_removed or shoppers_removed:
            log.info("expired %d idle sessions and %d shopper windows", sessions_removed, shoppers_removed)

    WorkerRoutes(
        settings.app_id,
        tracker,
        session_store,
        shopper_store,
        owned_partitions,
        broker_ready=lambda: app.producer.started and not app.rebalancing,
        api=SubscriptionsApi(
            subscriptions,
            delivery.deliverer,
            tokens=settings.api_token_list,
            intent_ids=model.intent_ids,
            allow_private_urls=settings.webhook_allow_private_urls,
            secret_overlap_seconds=settings.webhook_secret_overlap_seconds,
            clock=time.time,
            erasure=erasure,
            more_paths=openapi_paths(),
        ),
    ).mount(app.web.web_app)
    add_read_api(
        app,
        settings,
        ShopperReader(
            lambda: tracker.model,
            session_store,
            shopper_store,
            latest_changes,
            delivery_policy.in_holdout,
            window_policy.session_idle_seconds,
        ),
        topic=source.get_topic_name,
        partitions=lambda: app.consumer.topic_partitions(source.get_topic_name()) or settings.topic_partitions,
    )
    console.mount(app)

    return IntentWorker(app, settings, tracker, detection, delivery, sessions, shoppers)


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
