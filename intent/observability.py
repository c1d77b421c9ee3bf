"""What operators see: Prometheus metrics, health and readiness, and JSON log lines.

Metrics live in one registry per process (a worker is one process). The stages count what they do
through the module-level instruments below; the worker's web server exposes them at `/metrics`
together with `/healthz` (the process is alive) and `/readyz` (ready to do its job).
"""

from __future__ import annotations

import logging
import logging.config
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

REGISTRY = CollectorRegistry()

EVENTS_IN = Counter("intent_events_in_total", "Shopper events read from the events topic.", registry=REGISTRY)
EVENTS_REJECTED = Counter(
    "intent_events_rejected_total",
    "Events rejected before processing, by kind of reason.",
    ["reason"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "intent_dead_letters_total", "Records written to a dead-letter topic.", ["topic"], registry=REGISTRY
)
INFERENCE_SECONDS = Histogram(
    "intent_inference_seconds",
    "Time of one onnxruntime call (one round of a micro-batch).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
    registry=REGISTRY,
)
MICRO_BATCH_EVENTS = Histogram(
    "intent_micro_batch_events",
    "Events per micro-batch taken from the stream.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
    registry=REGISTRY,
)
ACTIVE_SESSIONS = Gauge("intent_active_sessions", "Session windows held by this worker.", registry=REGISTRY)
ACTIVE_SHOPPERS = Gauge("intent_active_shoppers", "Known-shopper windows held by this worker.", registry=REGISTRY)
STATE_RECOVERED_RECORDS = Counter(
    "intent_state_recovered_records",
    "Changelog records read to rebuild a table's state at a start or rebalance, by table.",
    ["table"],
    registry=REGISTRY,
)
INTENT_CHANGES = Counter(
    "intent_changes_total", "IntentChanged events emitted, by new intent.", ["intent"], registry=REGISTRY
)
CONSUMER_LAG = Gauge(
    "intent_consumer_lag",
    "Events of the input not yet read, per assigned partition.",
    ["partition"],
    registry=REGISTRY,
)
WEBHOOK_ATTEMPTS = Counter(
    "intent_webhook_attempts_total", "Webhook delivery attempts, by outcome.", ["outcome"], registry=REGISTRY
)
WEBHOOK_SECONDS = Histogram(
    "intent_webhook_attempt_seconds",
    "Duration of one webhook delivery attempt.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
    registry=REGISTRY,
)
DELIVERIES_SUPPRESSED = Counter(
    "intent_deliveries_suppressed_total",
    "Intent changes not delivered to subscribers, by reason.",
    ["reason"],
    registry=REGISTRY,
)
FREQUENCY_CAPS_REMOVED = Counter(
    "intent_frequency_caps_removed_total",
    "Shoppers' frequency-cap entries removed: expired (the period passed) or evicted (over the bound).",
    ["reason"],
    registry=REGISTRY,
)
WINDOWS_EVICTED = Counter(
    "intent_windows_evicted_total",
    "Windows a worker forgot to stay within INTENT_MAX_TRACKED_SHOPPERS, least recently seen first, "
    "by kind (session, shopper).",
    ["kind"],
    registry=REGISTRY,
)

COLLECTOR_MESSAGES = Counter(
    "intent_collector_messages_total", "Messages the collector took, by outcome.", ["outcome"], registry=REGISTRY
)
COLLECTOR_IDENTITIES_EVICTED = Counter(
    "intent_collector_identities_evicted_total",
    "anonymousId -> userId links a collector forgot to stay within INTENT_COLLECTOR_MAX_IDENTITIES.",
    registry=REGISTRY,
)


def reason_kind(reason: str) -> str:
    """A bounded label for a rejection reason: the field it names, or its first words."""
    head = reason.split(":", 1)[0] if ":" in reason else " ".join(reason.split()[:2])
    return head if len(head) <= 48 else head[:48]


ReadinessCheck = Callable[[], dict[str, bool]]


def add_health_routes(
    app: web.Application, readiness: ReadinessCheck, status: Callable[[], dict[str, Any]] | None = None
) -> None:
    """`/metrics`, `/healthz`, `/readyz` and, given `status`, `/status` on an aiohttp application."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"}, dumps=_dumps)

    async def readyz(_: web.Request) -> web.Response:
        checks = readiness()
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
            dumps=_dumps,
        )

    async def status_view(_: web.Request) -> web.Response:
        assert status is not None
        return web.json_response(status(), dumps=_dumps)

    if status is not None:
        app.router.add_get("/status", status_view)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's `ids` if any.

    Log calls that concern an event pass `extra={"ids": {...}}` (message id, shopper, change id),
    so a log search finds every line about one shopper or one intent change.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ids = getattr(record, "ids", None)
        if ids:
            line.update(ids)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def logging_config(level: str, json_lines: bool) -> dict[str, Any]:
    """A `logging.config.dictConfig` for every process of ours, Faust's worker included."""
    formatter = (
        {"()": f"{__name__}.JsonLogFormatter"}
        if json_lines
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
        },
        "root": {"level": level.upper(), "handlers": ["default"]},
    }


def configure_logging(level: str, json_lines: bool) -> None:
    logging.config.dictConfig(logging_config(level, json_lines))
