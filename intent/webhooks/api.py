"""The worker's API (aiohttp): webhook subscriptions and erasure of a shopper, served by the worker's
web server and described at /openapi.json.

Every call needs `Authorization: Bearer <token>` with one of `INTENT_API_TOKENS`; bad input is a
400 whose JSON names the field. The `whsec_` secret is shown once, in the answer that creates it
(or rotates it).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web

from intent.erasure import KINDS, ShopperErasure
from intent.webhooks.delivery import Deliverer
from intent.webhooks.subscriptions import Subscription, SubscriptionLog
from intent.webhooks.targets import TargetRejected, check_target

MAX_BODY_BYTES = 16_384
MAX_DESCRIPTION = 500
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, dumps=lambda v: orjson.dumps(v).decode())


def ok(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda v: orjson.dumps(v).decode())


class SubscriptionsApi:
    def __init__(
        self,
        log: SubscriptionLog,
        deliverer: Deliverer,
        *,
        tokens: tuple[str, ...],
        intent_ids: tuple[str, ...],
        allow_private_urls: bool,
        secret_overlap_seconds: float,
        clock: Callable[[], float],
        erasure: ShopperErasure | None = None,
        more_paths: Mapping[str, Any] | None = None,
    ) -> None:
        """Without `erasure` (tests of the subscriptions alone), `DELETE /v1/shoppers/{id}` is not served;
        `more_paths`: the OpenAPI paths of the worker's other routes (the read API), for /openapi.json."""
        self.log = log
        self.more_paths = more_paths or {}
        self.erasure = erasure
        self.deliverer = deliverer
        self.tokens = tokens
        self.intent_ids = intent_ids
        self.allow_private_urls = allow_private_urls
        self.secret_overlap_seconds = secret_overlap_seconds
        self.clock = clock

    def add_routes(self, app: web.Application) -> None:
        guarded = self._guarded
        app.router.add_post("/v1/subscriptions", guarded(self.create))
        app.router.add_get("/v1/subscriptions", guarded(self.list))
        app.router.add_get("/v1/subscriptions/{id}", guarded(self.get))
        app.router.add_delete("/v1/subscriptions/{id}", guarded(self.delete))
        app.router.add_post("/v1/subscriptions/{id}/rotate-secret", guarded(self.rotate_secret))
        app.router.add_post("/v1/subscriptions/{id}/test", guarded(self.test))
        if self.erasure is not None:
            app.router.add_delete("/v1/shoppers/{shopper_id}", guarded(self.erase_shopper))
        app.router.add_get("/openapi.json", self.openapi)

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            # every token is compared (no early exit), each in constant time: the answer's timing
            # tells nothing about how close a guess was, nor which token it matched
            matches = [hmac.compare_digest(token.encode(), known.encode()) for known in self.tokens]
            if scheme.lower() != "bearer" or not any(matches):
                return error(401, "a valid `Authorization: Bearer <token>` header is required")
            if not self.log.started or (self.erasure is not None and not self.erasure.started):
                return error(503, "the worker is starting: subscriptions are not loaded yet")
            try:
                return await handler(request)
            except BadRequest as bad:
                return error(400, bad.message, bad.field)

        return guarded

    async def create(self, request: web.Request) -> web.Response:
        body = await self._json_object(request)
        unknown = sorted(set(body) - {"url", "intents", "description"})
        if unknown:
            raise BadRequest(unknown[0], f"unknown field {unknown[0]!r}")
        url = body.get("url")
        if not isinstance(url, str) or not url:
            raise BadRequest("url", "url is required: the https URL to deliver intent changes to")
        try:
            await check_target(url, self.allow_private_urls)
        except TargetRejected as rejected:
            raise BadRequest("url", rejected.reason) from None
        intents = body.get("intents", [])
        if not isinstance(intents, list) or not all(isinstance(i, str) for i in intents):
            raise BadRequest("intents", "intents must be a list of intent ids")
        unknown_intents = [i for i in intents if i not in self.intent_ids]
        if unknown_intents:
            raise BadRequest("intents", f"unknown intent {unknown_intents[0]!r}; known: {', '.join(self.intent_ids)}")
        description = body.get("description")
        if description is not None and (not isinstance(description, str) or len(description) > MAX_DESCRIPTION):
            raise BadRequest("description", f"description must be a string of at most {MAX_DESCRIPTION} characters")
        subscription = Subscription.create(url, tuple(dict.fromkeys(intents)), description)
        subscription = replace(subscription, created_at=self.clock())
        await self.log.put(subscription)
        return ok({**subscription.public(), "secret": subscription.secrets[0].secret}, status=201)

    async def list(self, _: web.Request) -> web.Response:
        return ok({"subscriptions": [s.public() for s in self.log.registry.all()]})

    async def get(self, request: web.Request) -> web.Response:
        return ok(self._subscription(request).public())

    async def delete(self, request: web.Request) -> web.Response:
        subscription = self._subscription(request)
        await self.log.delete(subscription.id)
        return web.Response(status=204)

    async def rotate_secret(self, request: web.Request) -> web.Response:
        subscription = self._subscription(request).rotated(self.secret_overlap_seconds, self.clock())
        await self.log.put(subscription)
        return ok(
            {
                **subscription.public(),
                "secret": subscription.secrets[0].secret,
                "previous_secrets_valid_for_seconds": self.secret_overlap_seconds,
            }
        )

    async def test(self, request: web.Request) -> web.Response:
        attempt = await self.deliverer.ping(self._subscription(request))
        delivered = attempt.status is not None and 200 <= attempt.status < 300
        return ok({"delivered": delivered, **attempt.public()})

    async def erase_shopper(self, request: web.Request) -> web.Response:
        assert self.erasure is not None
        outcome = await self.erasure.request(request.match_info["shopper_id"])
        return ok(outcome.answer(), status=200 if outcome.removed is not None else 202)

    def _subscription(self, request: web.Request) -> Subscription:
        subscription = self.log.registry.get(request.match_info["id"])
        if subscription is None:
            raise web.HTTPNotFound(
                text=orjson.dumps({"error": "no such subscription"}).decode(), content_type="application/json"
            )
        return subscription

    @staticmethod
    async def _json_object(request: web.Request) -> dict[str, Any]:
        raw = await request.content.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            raise BadRequest(None, f"the body is limited to {MAX_BODY_BYTES} bytes")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest(None, "the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise BadRequest(None, "the body must be a JSON object")
        return body

    async def openapi(self, _: web.Request) -> web.Response:
        return ok(openapi_document(self.intent_ids, erasure=self.erasure is not None, more_paths=self.more_paths))


def openapi_document(
    intent_ids: tuple[str, ...], erasure: bool = True, more_paths: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    error_schema = {
        "type": "object",
        "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
        "required": ["error"],
    }
    subscription = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "url": {"type": "string"},
            "intents": {"type": "array", "items": {"type": "string", "enum": list(intent_ids)}},
            "description": {"type": ["string", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
            "enabled": {"type": "boolean"},
            "disabled_reason": {"type": ["string", "null"]},
        },
        "required": ["id", "url", "intents", "created_at", "enabled"],
    }
    with_secret = {
        "allOf": [
            subscription,
            {"type": "object", "properties": {"secret": {"type": "string"}}, "required": ["secret"]},
        ]
    }
    error_content = {"application/json": {"schema": error_schema}}
    responses_common = {
        "401": {"description": "missing or wrong bearer token", "content": error_content},
        "503": {"description": "the worker is starting: subscriptions are not loaded yet", "content": error_content},
    }
    not_found = {"404": {"description": "no such subscription", "content": error_content}}
    identifier = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    erased = {
        "type": "object",
        "properties": {
            "shopper_id": {"type": "string"},
            "status": {"type": "string", "enum": ["erased", "pending"]},
            "removed": {
                "type": "object",
                "properties": {kind: {"type": "integer", "minimum": 0} for kind in KINDS},
                "required": list(KINDS),
            },
        },
        "required": ["shopper_id", "status", "removed"],
    }
    erasure_paths = {
        "/v1/shoppers/{shopper_id}": {
            "parameters": [{"name": "shopper_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "delete": {
                "summary": "Erase a shopper (userId or anonymousId): windows, frequency cap, pending deliveries "
                "and identity links, with tombstones on every changelog and compacted topic.",
                "responses": {
                    "200": {
                        "description": "erased; what was removed, per kind",
                        "content": {"application/json": {"schema": erased}},
                    },
                    "202": {
                        "description": "the identity links are removed; the worker that owns the shopper's "
                        "partition has not applied the rest yet and will when it runs (removed counts so far)",
                        "content": {"application/json": {"schema": erased}},
                    },
                    **responses_common,
                },
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "intent", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Subscription": subscription, "Error": error_schema},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/subscriptions": {
                "post": {
                    "summary": "Subscribe a URL to intent changes; the answer shows the signing secret once.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "url": {"type": "string", "description": "https URL of a public host"},
                                        "intents": {
                                            "type": "array",
                                            "items": {"type": "string", "enum": list(intent_ids)},
                                            "description": "intents to deliver changes to; empty or absent: all",
                                        },
                                        "description": {"type": "string", "maxLength": MAX_DESCRIPTION},
                                    },
                                    "required": ["url"],
                                    "additionalProperties": False,
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": {"description": "created", "content": {"application/json": {"schema": with_secret}}},
                        "400": {"description": "bad input", "content": {"application/json": {"schema": error_schema}}},
                        **responses_common,
                    },
                },
                "get": {
                    "summary": "List subscriptions (without secrets).",
                    "responses": {
                        "200": {
                            "description": "the subscriptions",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"subscriptions": {"type": "array", "items": subscription}},
                                    }
                                }
                            },
                        },
                        **responses_common,
                    },
                },
            },
            "/v1/subscriptions/{id}": {
                "parameters": identifier,
                "get": {
                    "summary": "One subscription.",
                    "responses": {
                        "200": {
                            "description": "the subscription",
                            "content": {"application/json": {"schema": subscription}},
                        },
                        **not_found,
                        **responses_common,
                    },
                },
                "delete": {
                    "summary": "Unsubscribe; pending deliveries are dropped.",
                    "responses": {"204": {"description": "deleted"}, **not_found, **responses_common},
                },
            },
            "/v1/subscriptions/{id}/rotate-secret": {
                "parameters": identifier,
                "post": {
                    "summary": "A new signing secret; the previous one keeps signing during the overlap.",
                    "responses": {
                        "200": {"description": "rotated", "content": {"application/json": {"schema": with_secret}}},
                        **not_found,
                        **responses_common,
                    },
                },
            },
            "/v1/subscriptions/{id}/test": {
                "parameters": identifier,
                "post": {
                    "summary": "Send one signed intent.ping now and report the outcome.",
                    "responses": {
                        "200": {
                            "description": "the attempt",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "delivered": {"type": "boolean"},
                                            "status": {"type": ["integer", "null"]},
                                            "error": {"type": ["string", "null"]},
                                        },
                                    }
                                }
                            },
                        },
                        **not_found,
                        **responses_common,
                    },
                },
            },
            **(erasure_paths if erasure else {}),
            **(more_paths or {}),
        },
    }
