"""The console's routes on the worker's web server, under `/console/`.

The page and its script and style are static and public (they hold no data). Every other route
needs a console session (`intent.console.sessions`): its cookie is the only credential the console
takes, and only under `/console/`; the public `/v1` API never reads cookies, so no other site can
make a browser call it. The console's own calls are thin: the live view reads `LiveFeed`; the
shopper and subscription views call the worker's `/v1` API over HTTP with the session's token, so
they answer exactly what the API answers (a shopper's read is routed to the worker that owns the
shopper, and audited, by the API itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import faust
import mode
import orjson
from aiohttp import web

from intent.console.feed import AttemptLog, FeedTopics, LiveFeed
from intent.console.sessions import (
    COOKIE_NAME,
    CSRF_HEADER,
    ConsoleSessions,
    Session,
    check_same_origin,
    matching_token,
)
from intent.events import iso_time
from intent.settings import Settings
from intent.taxonomy import Intent
from intent.webhooks.api import MAX_BODY_BYTES, error, ok

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}
LIVE_REFRESH_SECONDS = 0.5
LIVE_HEARTBEAT_SECONDS = 15.0
EXPIRED_SESSIONS_SWEEP_SECONDS = 600.0
MAX_LOGIN_BYTES = 4_096
# The page loads nothing from elsewhere and runs no inline script: an injected tag could do neither.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
SessionHandler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ApiAnswer:
    status: int
    body: bytes
    content_type: str
    retry_after: str | None

    @property
    def is_json(self) -> bool:
        return self.content_type == "application/json"

    def response(self) -> web.Response:
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
        if self.retry_after is not None:
            headers["Retry-After"] = self.retry_after
        if self.status == 204:
            return web.Response(status=204, headers=headers)
        return web.Response(status=self.status, body=self.body, content_type=self.content_type, headers=headers)


def local_address(host: str) -> str:
    """Where this process reaches its own web server, given the interface it binds."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def is_https(request: web.Request) -> bool:
    # A client may claim https falsely: that only adds the Secure flag, which takes nothing from it.
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


class Console:
    """The console of one worker: its routes, sessions, live feed and record of webhook attempts."""

    def __init__(self, settings: Settings, intents: Sequence[Intent], model_version: str, domain_name: str) -> None:
        self.settings = settings
        self.intents = [{"id": i.id, "label": i.label, "sensitive": i.sensitive} for i in intents]
        self.model_version = model_version
        self.domain_name = domain_name
        self.sessions = ConsoleSessions(
            settings.bootstrap_servers,
            settings.console_sessions_topic,
            settings.api_token_list,
            settings.console_session_hours * 3600,
        )
        self.feed = LiveFeed(
            settings.bootstrap_servers,
            FeedTopics(
                settings.changes_topic,
                settings.dead_letter_topic,
                settings.webhook_dead_letter_topic,
                settings.webhook_attempts_topic,
            ),
            settings.topic_partitions,
            settings.console_history_hours * 3600,
            {i.id: i.label for i in intents},
        )
        self.attempts = AttemptLog(settings.bootstrap_servers, settings.webhook_attempts_topic)
        self.api_base = f"http://{local_address(settings.web_host)}:{settings.web_port}"
        # a test delivery takes up to the webhook timeout; the API itself answers quickly otherwise
        self.api_timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds + 10)
        self.page = (STATIC_DIR / "index.html").read_bytes()
        self.assets = {name: (STATIC_DIR / name).read_bytes() for name in ASSETS}
        self._http: aiohttp.ClientSession | None = None
        self._closing = asyncio.Event()
        self._started = False
        self._sweeper: asyncio.Task[None] | None = None

    # wiring

    def mount(self, app: faust.App) -> None:
        """Add the routes to the worker's web server and start and stop with the worker."""
        self.add_routes(app.web.web_app)
        app.web.web_app.on_shutdown.append(self._end_live_views)
        console = self

        @app.service
        class ConsoleService(mode.Service):
            async def on_start(self) -> None:
                await console.start()

            async def on_stop(self) -> None:
                await console.stop()

    def add_routes(self, app: web.Application) -> None:
        router = app.router
        router.add_get("/console", self.to_page)
        router.add_get("/console/", self.serve_page)
        for name in ASSETS:
            router.add_get(f"/console/{name}", self.serve_asset)
        router.add_post("/console/api/login", self.login)
        router.add_post("/console/api/logout", self._session(self.logout, changes_state=True))
        router.add_get("/console/api/session", self._session(self.session_info))
        router.add_get("/console/api/live", self._session(self.live))
        router.add_get("/console/api/shopper", self._session(self.shopper))
        router.add_get("/console/api/subscriptions", self._session(self.subscriptions))
        changing = {"changes_state": True}
        router.add_post("/console/api/subscriptions", self._session(self.create_subscription, **changing))
        router.add_delete("/console/api/subscriptions/{id}", self._session(self.delete_subscription, **changing))
        router.add_post("/console/api/subscriptions/{id}/rotate-secret", self._session(self.rotate_secret, **changing))
        router.add_post("/console/api/subscriptions/{id}/test", self._session(self.test_subscription, **changing))

    async def start(self) -> None:
        await self.sessions.start()
        await self.attempts.start()
        await self.feed.start()
        self._http = aiohttp.ClientSession(timeout=self.api_timeout)
        self._sweeper = asyncio.create_task(self._remove_expired_sessions(), name="console sessions sweep")
        self._started = True

    async def stop(self) -> None:
        self._started = False
        self._closing.set()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await self.feed.stop()
        await self.attempts.stop()
        await self.sessions.stop()
        if self._http is not None:
            await self._http.close()

    async def _end_live_views(self, _: web.Application) -> None:
        # the web server waits for open handlers when it stops: live views must end first
        self._closing.set()

    async def _remove_expired_sessions(self) -> None:
        while True:
            await asyncio.sleep(EXPIRED_SESSIONS_SWEEP_SECONDS)
            try:
                await self.sessions.remove_expired()
            except Exception:  # the broker may be away a while: the next sweep tries again
                log.exception("expired console sessions not removed")

    def _session(self, handler: SessionHandler, changes_state: bool = False) -> Callable[[web.Request], Any]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self._started:
                return _with_headers(error(503, "the console is starting"), {"Retry-After": "5"})
            session = self.sessions.find(request.cookies.get(COOKIE_NAME, ""))
            if session is None:
                return _with_headers(error(401, "log in to the console first"))
            if changes_state:
                refused = check_same_origin(request.headers)
                if refused is None and not hmac.compare_digest(
                    request.headers.get(CSRF_HEADER, "").encode(), session.csrf_token.encode()
                ):
                    refused = f"the {CSRF_HEADER} header of the console's session is missing or wrong"
                if refused is not None:
                    log.warning("console: refused %s %s: %s", request.method, request.path, refused)
                    return _with_headers(error(403, refused))
            return await handler(request, session)

        return guarded

    # public: the page and its assets

    async def to_page(self, _: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect("/console/")

    async def serve_page(self, _: web.Request) -> web.Response:
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        return web.Response(body=self.page, content_type="text/html", charset="utf-8", headers=headers)

    async def serve_asset(self, request: web.Request) -> web.Response:
        name = request.path.rsplit("/", 1)[-1]
        return web.Response(
            body=self.assets[name],
            content_type=ASSETS[name],
            charset="utf-8",
            headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
        )

    # login and logout

    async def login(self, request: web.Request) -> web.Response:
        """Exchange an API token (in the body, never in a URL) for a session cookie."""
        candidate = _token_in(await request.content.read(MAX_LOGIN_BYTES + 1))
        token = matching_token(candidate, self.settings.api_token_list) if candidate is not None else None
        if token is None:
            return _with_headers(error(401, 'send one of the API tokens (INTENT_API_TOKENS) as {"token": ...}'))
        if not self._started:
            return _with_headers(error(503, "the console is starting"), {"Retry-After": "5"})
        refused = check_same_origin(request.headers)  # a login forced on a browser by another site
        if refused is not None:
            return _with_headers(error(403, refused))
        session = await self.sessions.open(token)
        response = _with_headers(ok(self._session_body(session)))
        response.set_cookie(
            COOKIE_NAME,
            session.session_id,
            max_age=int(self.sessions.lifetime_seconds),
            path="/console",
            httponly=True,
            samesite="Strict",
            secure=is_https(request),
        )
        return response

    async def logout(self, request: web.Request, session: Session) -> web.Response:
        await self.sessions.end(session)
        response = web.Response(status=204, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})
        response.del_cookie(COOKIE_NAME, path="/console", secure=is_https(request), httponly=True, samesite="Strict")
        return response

    async def session_info(self, _: web.Request, session: Session) -> web.Response:
        return _with_headers(ok(self._session_body(session)))

    def _session_body(self, session: Session) -> dict[str, Any]:
        return {
            "csrf_token": session.csrf_token,
            "expires_at": iso_time(session.expires_at),
            "app_id": self.settings.app_id,
            "domain": self.domain_name,
            "model_version": self.model_version,
            "intents": self.intents,
            "history_hours": self.settings.console_history_hours,
        }

    # live

    async def live(self, request: web.Request, session: Session) -> web.StreamResponse:
        """Server-sent events: the whole view first, then every half second what changed."""
        response = web.StreamResponse(
            headers={
                **SECURITY_HEADERS,
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # a buffering proxy would hold the stream back
            }
        )
        await response.prepare(request)
        shown: tuple[int, bool] | None = None
        last_write = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            while not self._closing.is_set():
                if self.sessions.find(session.session_id) is None:
                    await response.write(b"event: logout\ndata: {}\n\n")
                    break
                now_showing = (self.feed.sequence, self.feed.caught_up)
                if now_showing != shown:
                    view = self.feed.view(after=0 if shown is None else shown[0])
                    await response.write(b"event: update\ndata: " + orjson.dumps(view) + b"\n\n")
                    shown, last_write = now_showing, time.monotonic()
                elif time.monotonic() - last_write > LIVE_HEARTBEAT_SECONDS:
                    await response.write(b": still here\n\n")
                    last_write = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), LIVE_REFRESH_SECONDS)
        return response

    # shoppers: the read side of the API

    async def shopper(self, request: web.Request, session: Session) -> web.Response:
        shopper_id = request.query.get("id", "").strip()
        if not shopper_id:
            return _with_headers(error(400, "a shopper id is required", "id"))
        path = f"/v1/shoppers/{quote(shopper_id, safe='')}"
        intent, timeline = await asyncio.gather(
            self._api(session, "GET", f"{path}/intent"), self._api(session, "GET", f"{path}/timeline")
        )
        for answer in (intent, timeline):
            if answer.status != 200 or not answer.is_json:
                return self._passed_on(answer, "GET /v1/shoppers/{id}/intent and /timeline")
        return _with_headers(ok({"intent": orjson.loads(intent.body), "timeline": orjson.loads(timeline.body)}))

    # subscriptions: the API's, with each one's latest attempts

    async def subscriptions(self, _: web.Request, session: Session) -> web.Response:
        answer = await self._api(session, "GET", "/v1/subscriptions")
        if answer.status != 200 or not answer.is_json:
            return self._passed_on(answer, "GET /v1/subscriptions")
        listed = orjson.loads(answer.body)["subscriptions"]
        return _with_headers(
            ok(
                {
                    "subscriptions": [{**s, "outcomes": self.feed.outcomes(s["id"])} for s in listed],
                    "outcomes_since": iso_time(self.feed.since),
                    "outcomes_caught_up": self.feed.caught_up,
                }
            )
        )

    async def create_subscription(self, request: web.Request, session: Session) -> web.Response:
        body = await request.content.read(MAX_BODY_BYTES + 1)
        return (await self._api(session, "POST", "/v1/subscriptions", body)).response()

    async def delete_subscription(self, request: web.Request, session: Session) -> web.Response:
        return (await self._api(session, "DELETE", self._subscription_path(request))).response()

    async def rotate_secret(self, request: web.Request, session: Session) -> web.Response:
        return (await self._api(session, "POST", f"{self._subscription_path(request)}/rotate-secret")).response()

    async def test_subscription(self, request: web.Request, session: Session) -> web.Response:
        return (await self._api(session, "POST", f"{self._subscription_path(request)}/test")).response()

    @staticmethod
    def _subscription_path(request: web.Request) -> str:
        return f"/v1/subscriptions/{quote(request.match_info['id'], safe='')}"

    async def _api(self, session: Session, method: str, path: str, body: bytes | None = None) -> ApiAnswer:
        """Call this worker's own `/v1` API as the session's token."""
        assert self._http is not None, "start() first"
        headers = {"Authorization": f"Bearer {session.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._http.request(method, self.api_base + path, data=body, headers=headers) as response:
                return ApiAnswer(
                    response.status, await response.read(), response.content_type, response.headers.get("Retry-After")
                )
        except (aiohttp.ClientError, TimeoutError) as failure:
            message = f"the worker's API did not answer: {type(failure).__name__}: {failure}"
            return ApiAnswer(502, orjson.dumps({"error": message}), "application/json", None)

    @staticmethod
    def _passed_on(answer: ApiAnswer, what: str) -> web.Response:
        """The API's own error as it is; an answer that is not the API's JSON (a route this worker
        does not serve) as a 502 that says so, never as if a shopper were unknown."""
        if answer.is_json:
            return answer.response()
        return _with_headers(error(502, f"this worker does not serve {what} (it answered {answer.status})"))


def _with_headers(response: web.Response, extra: dict[str, str] | None = None) -> web.Response:
    response.headers.update({**SECURITY_HEADERS, "Cache-Control": "no-store", **(extra or {})})
    return response


def _token_in(raw: bytes) -> str | None:
    """The `token` of a login's JSON body, if it has one."""
    if len(raw) > MAX_LOGIN_BYTES:
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    token = body.get("token") if isinstance(body, dict) else None
    return token if isinstance(token, str) else None
