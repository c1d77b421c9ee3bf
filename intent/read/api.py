"""The read API: `GET /v1/shoppers/{shopper_id}/intent` and `.../timeline`, on every worker.

Same credential as the rest of the API (`Authorization: Bearer <token>` with one of
`INTENT_API_TOKENS`). A call is answered from the state of the worker that owns the shopper
(`intent.read.routing`): locally, or forwarded there with its credential. When the owner does not
know the shopper (her events were partitioned otherwise than by murmur2, or the assignment moved),
or is not known, the other workers are asked before the answer is 404; 503 with `Retry-After` while
the owner's tables are being restored after a rebalance, or a worker that may hold her did not answer.
Every call that passed the credential check is written to the audit log (`intent.read.audit`).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from aiohttp import web

from intent.read.answers import CURRENT_INTENTS, TIMELINE_INTENTS, ShopperReader
from intent.read.audit import AuditLog
from intent.read.routing import FORWARDED_HEADER, Answer, ShopperRouting
from intent.settings import Settings

INTENT_ROUTE = "/v1/shoppers/{shopper_id}/intent"
TIMELINE_ROUTE = "/v1/shoppers/{shopper_id}/timeline"
RETRY_AFTER_SECONDS = 2  # a rebalance's table recovery takes seconds on the embedded broker


@dataclass
class _Routed:
    answer: Answer
    forwarded_to: list[str] = field(default_factory=list)


class ShopperReadApi:
    def __init__(
        self,
        reader: ShopperReader,
        routing: ShopperRouting,
        audit: AuditLog,
        *,
        tokens: tuple[str, ...],
        ready: Callable[[], bool],
    ) -> None:
        """`ready()` is False while this worker's tables may not be restored (before its first
        assignment, in a rebalance and the recovery after it)."""
        self.reader = reader
        self.routing = routing
        self.audit = audit
        self.tokens = tokens
        self.ready = ready

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(INTENT_ROUTE, self.intent)
        app.router.add_get(TIMELINE_ROUTE, self.timeline)
        app.on_cleanup.append(lambda _: self.routing.close())

    async def intent(self, request: web.Request) -> web.Response:
        return await self._read(request, INTENT_ROUTE)

    async def timeline(self, request: web.Request) -> web.Response:
        return await self._read(request, TIMELINE_ROUTE)

    async def _read(self, request: web.Request, route: str) -> web.Response:
        token = self._token(request)
        if token is None:
            return _response(_error(401, "a valid `Authorization: Bearer <token>` header is required"))
        shopper_id = request.match_info["shopper_id"]
        forwarded_by = request.headers.get(FORWARDED_HEADER)
        if forwarded_by is not None:  # the worker that took the call asked this one: answer, never forward
            routed = _Routed(self._local(route, shopper_id))
        else:
            routed = await self._routed(route, shopper_id, request)
        self.audit.read(
            route=route,
            shopper_id=shopper_id,
            token=token,
            forwarded_by=forwarded_by,
            forwarded_to=routed.forwarded_to,
            status=routed.answer.status,
        )
        return _response(routed.answer)

    def _token(self, request: web.Request) -> str | None:
        """The known token the call offers, if any (as `intent.webhooks.api` checks it)."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        # every token compared, each in constant time: the timing tells nothing of a guess
        matches = [hmac.compare_digest(token.encode(), known.encode()) for known in self.tokens]
        return token if scheme.lower() == "bearer" and any(matches) else None

    def _local(self, route: str, shopper_id: str) -> Answer:
        """The answer from this worker's own state."""
        if not self.ready():
            return _error(503, "this worker's tables are being restored (a rebalance): ask again shortly")
        if route == INTENT_ROUTE:
            body = self.reader.intent(shopper_id, served_by=self.routing.own_url)
        else:
            body = self.reader.timeline(shopper_id)
        if body is None:
            return _error(404, "no such shopper: no window and no intent change of hers is kept")
        return Answer(200, orjson.dumps(body))

    async def _routed(self, route: str, shopper_id: str, request: web.Request) -> _Routed:
        """The owner's answer; when it does not know her, the first other worker's that does."""
        own_url = self.routing.own_url
        owner = self.routing.owner(shopper_id)
        asked = {own_url}
        forwarded_to: list[str] = []
        busy = False  # a worker that may hold her could not answer now
        if owner is None or owner == own_url:
            answer = self._local(route, shopper_id)
            if answer.status != 404:
                return _Routed(answer)
        else:
            forwarded_to.append(owner)
            asked.add(owner)
            forwarded = await self.routing.forward(owner, request)
            if forwarded is not None and forwarded.status != 404:
                return _Routed(forwarded, forwarded_to)
            local = self._local(route, shopper_id)  # a producer's partitioner may have put her here
            if local.status == 200:
                return _Routed(local, forwarded_to)
            busy = forwarded is None or local.status == 503
        others = [url for url in self.routing.members() if url not in asked]
        forwarded_to += others
        answers = await asyncio.gather(*(self.routing.forward(url, request) for url in others))
        found = next((answer for answer in answers if answer is not None and answer.status == 200), None)
        if found is not None:
            return _Routed(found, forwarded_to)
        if busy or any(answer is None or answer.status == 503 for answer in answers):
            return _Routed(
                _error(503, "a worker that may hold this shopper did not answer: ask again shortly"), forwarded_to
            )
        return _Routed(
            _error(404, "no such shopper: no worker keeps a window or an intent change of hers"), forwarded_to
        )


def add_read_api(
    app: faust.App,
    settings: Settings,
    reader: ShopperReader,
    topic: Callable[[], str],
    partitions: Callable[[], int],
) -> None:
    """Serve the read API on the worker's web server; `topic()` names the topic whose partitions own
    the shoppers, `partitions()` counts them."""
    own_url = str(app.conf.canonical_url)
    routing = ShopperRouting(own_url, lambda: app.assignor.external_topics_metadata(), topic, partitions)
    ShopperReadApi(
        reader,
        routing,
        AuditLog(own_url, settings.audit_log_path),
        tokens=settings.api_token_list,
        # tables are restored once the first assignment's recovery ended, and again after each rebalance
        ready=lambda: app.rebalancing_count > 0 and not app.rebalancing,
    ).add_routes(app.web.web_app)


def _error(status: int, message: str) -> Answer:
    return Answer(status, orjson.dumps({"error": message}), str(RETRY_AFTER_SECONDS) if status == 503 else None)


def _response(answer: Answer) -> web.Response:
    headers = {"Retry-After": answer.retry_after} if answer.retry_after is not None else None
    return web.Response(body=answer.body, status=answer.status, content_type="application/json", headers=headers)


def openapi_paths() -> dict[str, Any]:
    """The read routes for the worker's OpenAPI document (`intent.webhooks.api.openapi_document`)."""
    error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    intent_ref = {
        "type": "object",
        "properties": {"id": {"type": "string"}, "label": {"type": "string"}, "probability": {"type": "number"}},
        "required": ["id", "label", "probability"],
    }
    changed_intent = {
        "type": ["object", "null"],
        "properties": {
            "id": {"type": "string"},
            "label": {"type": "string"},
            "confidence": {"type": ["number", "null"]},
            "sensitive": {"type": "boolean"},
        },
        "required": ["id", "label", "confidence"],
    }
    change = {
        "type": "object",
        "description": "An intent change as its IntentChanged said it, with the suggestions it carried "
        "(none for a shopper in the holdout).",
        "properties": {
            "id": {"type": "string"},
            "detected_at": {"type": "string", "format": "date-time"},
            "event_time": {"type": "string", "format": "date-time"},
            "from_intent": changed_intent,
            "to_intent": changed_intent,
            "evidence": {"type": "array", "items": {"type": "object"}},
            "suggestions": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["id", "detected_at", "event_time", "from_intent", "to_intent", "evidence", "suggestions"],
    }
    window_size = {
        "type": ["object", "null"],
        "properties": {"events": {"type": "integer"}, "last_event_at": {"type": "string", "format": "date-time"}},
        "required": ["events", "last_event_at"],
    }
    intent_answer = {
        "type": "object",
        "properties": {
            "shopper_id": {"type": "string"},
            "known": {"type": "boolean", "description": "a shopper window (userId) exists"},
            "holdout": {"type": "boolean"},
            "committed_intent": {
                "type": ["object", "null"],
                "description": "what the last IntentChanged said: the detector's committed intent",
                "properties": {
                    "id": {"type": "string"},
                    "label": {"type": "string"},
                    "confidence": {"type": ["number", "null"]},
                },
                "required": ["id", "label", "confidence"],
            },
            "current": {
                "type": "array",
                "items": intent_ref,
                "maxItems": CURRENT_INTENTS,
                "description": "the model's most likely intents after the window's last event",
            },
            "session_window": window_size,
            "shopper_window": window_size,
            "last_change": {"oneOf": [change, {"type": "null"}]},
            "model_version": {"type": "string"},
            "served_by": {"type": "string", "description": "the worker that answered (its advertised URL)"},
        },
        "required": [
            "shopper_id",
            "known",
            "holdout",
            "committed_intent",
            "current",
            "session_window",
            "shopper_window",
            "last_change",
            "model_version",
            "served_by",
        ],
    }
    timeline_answer = {
        "type": "object",
        "properties": {
            "shopper_id": {"type": "string"},
            "events": {
                "type": "array",
                "description": "the window's events, oldest first, each with the model's most likely intents "
                "after it, recomputed from the window",
                "items": {
                    "type": "object",
                    "properties": {
                        "t": {"type": "string", "format": "date-time"},
                        "event": {"type": "string"},
                        "product_id": {"type": ["string", "null"]},
                        "product_name": {"type": "string"},
                        "category": {"type": ["string", "null"]},
                        "price": {"type": "number"},
                        "query": {"type": "string"},
                        "top_intents": {"type": "array", "items": intent_ref, "maxItems": TIMELINE_INTENTS},
                    },
                    "required": ["t", "event", "product_id", "category", "top_intents"],
                },
            },
            "changes": {"type": "array", "items": change, "description": "the last intent changes, oldest first"},
            "holdout": {"type": "boolean"},
        },
        "required": ["shopper_id", "events", "changes", "holdout"],
    }
    parameters = [
        {
            "name": "shopper_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "the stream's key: userId, else anonymousId",
        }
    ]
    common = {
        "401": {"description": "missing or wrong bearer token", "content": error_content},
        "404": {
            "description": "no worker keeps a window or an intent change of this shopper",
            "content": error_content,
        },
        "503": {
            "description": "the owner's tables are being restored, or a worker that may hold the shopper did not "
            "answer; ask again after `Retry-After` seconds",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
            "content": error_content,
        },
    }
    return {
        INTENT_ROUTE: {
            "parameters": parameters,
            "get": {
                "summary": "A shopper's current intent: committed, the model's current top intents, window sizes "
                "and the last change with its suggestions. Consent, sensitive intents and the holdout apply "
                "as for webhooks.",
                "responses": {
                    "200": {
                        "description": "the shopper's intent",
                        "content": {"application/json": {"schema": intent_answer}},
                    },
                    **common,
                },
            },
        },
        TIMELINE_ROUTE: {
            "parameters": parameters,
            "get": {
                "summary": "The window's events with the model's top intents after each (recomputed from the "
                "window) and the shopper's last intent changes with evidence and suggestions.",
                "responses": {
                    "200": {
                        "description": "the shopper's timeline",
                        "content": {"application/json": {"schema": timeline_answer}},
                    },
                    **common,
                },
            },
        },
    }
