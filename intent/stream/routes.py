"""The worker's web routes: health, readiness, status and metrics (`intent.observability`) and the
API (`intent.webhooks.api`), mounted on the worker's web server, which serves nothing else
(`intent.web`) but the read API (`intent.read.api`, mounted by `intent.read.api.add_read_api`)."""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from intent import observability as metrics
from intent.tracking import IntentTracker
from intent.webhooks.api import SubscriptionsApi


@dataclass
class WorkerRoutes:
    """What the worker answers over HTTP, and from which of its parts."""

    app_id: str
    tracker: IntentTracker
    sessions: Sized
    shoppers: Sized
    owned_partitions: Callable[[], set[int]]
    broker_ready: Callable[[], bool]  # connected, and not in a rebalance
    api: SubscriptionsApi

    def readiness(self) -> dict[str, bool]:
        return {
            "model_loaded": self.tracker.model_ready,
            "broker_connected": self.broker_ready(),
            "partitions_assigned": bool(self.owned_partitions()),
        }

    def status(self) -> dict[str, Any]:
        """Counts only: nothing about any one shopper."""
        return {
            "app_id": self.app_id,
            "model_version": self.tracker.model.version,
            "partitions": sorted(self.owned_partitions()),
            "sessions": len(self.sessions),
            "shoppers": len(self.shoppers),
            "events": self.tracker.stats.events,
        }

    def mount(self, web_app: web.Application) -> None:
        metrics.add_health_routes(web_app, self.readiness, self.status)
        self.api.add_routes(web_app)
