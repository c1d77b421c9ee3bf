"""Operators' view: metrics, health, readiness and JSON log lines."""

from __future__ import annotations

import io
import logging

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from intent import observability


async def client_for(checks: dict[str, bool]) -> TestClient:
    app = web.Application()
    observability.add_health_routes(app, lambda: checks)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_metrics_are_exposed_in_the_prometheus_text_format() -> None:
    observability.INTENT_CHANGES.labels("cold_flu_care").inc()
    client = await client_for({})
    try:
        response = await client.get("/metrics")
        body = await response.text()
    finally:
        await client.close()
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert 'intent_changes_total{intent="cold_flu_care"}' in body
    for name in (
        "intent_events_in_total",
        "intent_inference_seconds_bucket",
        "intent_active_sessions",
        "intent_webhook_attempts_total",
        "intent_deliveries_suppressed_total",
    ):
        assert name in body


async def test_readiness_names_the_check_that_fails_and_health_stays_alive() -> None:
    client = await client_for({"model_loaded": True, "partitions_assigned": False})
    try:
        ready = await client.get("/readyz")
        alive = await client.get("/healthz")
        ready_body = await ready.json()
    finally:
        await client.close()
    assert ready.status == 503
    assert ready_body == {"status": "not ready", "checks": {"model_loaded": True, "partitions_assigned": False}}
    assert alive.status == 200


def test_rejection_reasons_become_bounded_metric_labels() -> None:
    assert observability.reason_kind("properties.price: expected a number, got str") == "properties.price"
    assert observability.reason_kind("event of 40000 bytes is over the limit of 32768") == "event of"
    assert len(observability.reason_kind("x" * 500 + ": y")) == 48


def test_log_lines_are_json_objects_carrying_the_ids() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(observability.JsonLogFormatter())
    logger = logging.getLogger("intent.test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("dead-lettered %s", "t/0/7", extra={"ids": {"offset": 7, "shopper_id": "ada"}})
    finally:
        logger.removeHandler(handler)
    line = orjson.loads(stream.getvalue())
    assert line["level"] == "WARNING" and line["message"] == "dead-lettered t/0/7"
    assert line["offset"] == 7 and line["shopper_id"] == "ada"
    assert line["time"].endswith("Z")
