"""Console logins: an HttpOnly cookie names a session that every worker knows.

A login with an API token (`INTENT_API_TOKENS`) creates a random session id. The browser keeps it in
an HttpOnly, SameSite=Strict cookie; the compacted topic `INTENT_CONSOLE_SESSIONS_TOPIC` keeps only
its SHA-256, its expiry and an HMAC of the token keyed by the id. Whoever reads the topic can
neither use a session nor learn a token, and every worker follows the topic (as it follows the
subscriptions), so a load balancer may send a browser's calls to any worker, and a logout (a
tombstone) ends the session on all of them. Removing a token from `INTENT_API_TOKENS` ends the
sessions opened with it.

Cross-site requests: the cookie is SameSite=Strict, and every state-changing call must also carry
the session's CSRF token in a header and come from the console's own origin (`check_same_origin`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from intent.kafka import CompactedTopic

log = logging.getLogger(__name__)

COOKIE_NAME = "intent_console"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True)
class Session:
    session_id: str  # the cookie's value
    token: str  # the API token it was opened with: the console calls the API with it
    expires_at: float

    @property
    def csrf_token(self) -> str:
        """Derived from the session id, so nothing more is stored, and unknown to other sites."""
        return hmac.new(self.session_id.encode(), b"intent-console-csrf", hashlib.sha256).hexdigest()


def _record_key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _token_mac(session_id: str, token: str) -> str:
    return hmac.new(session_id.encode(), token.encode(), hashlib.sha256).hexdigest()


def matching_token(candidate: str, tokens: tuple[str, ...]) -> str | None:
    """The configured token equal to `candidate`, compared with every token in constant time (the
    timing tells nothing about how close a guess was, nor which token it matched)."""
    found = None
    for token in tokens:
        if hmac.compare_digest(candidate.encode(), token.encode()):
            found = token
    return found


def check_same_origin(headers: Mapping[str, str]) -> str | None:
    """Why a state-changing request does not come from the console's own origin, or None if it does.

    Browsers send `Origin` with every POST and DELETE (a `Referer` when some privacy setting drops
    it); a request with neither is not from the console's page, so it is refused. Hosts are
    compared, not schemes: a TLS proxy in front of the worker talks plain HTTP to it."""
    host = headers.get("Host", "")
    source = headers.get("Origin") or headers.get("Referer")
    if not source or source == "null":
        return "the request names no origin: state-changing console calls come from the console's page only"
    if urlsplit(source).netloc != host:
        return f"cross-origin request from {urlsplit(source).netloc or source!r} refused"
    return None


class ConsoleSessions:
    """Opens, finds and ends console sessions; follows the sessions topic."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        tokens: tuple[str, ...],
        lifetime_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tokens = tokens
        self.lifetime_seconds = lifetime_seconds
        self.clock = clock
        self._records: dict[str, tuple[str, float]] = {}  # sha256(session id) -> (token mac, expires at)
        self._topic = CompactedTopic(bootstrap_servers, topic, self._apply)

    def _apply(self, key: str, value: bytes | None) -> None:
        if value is None:
            self._records.pop(key, None)
            return
        try:
            record = orjson.loads(value)
            self._records[key] = (str(record["token_mac"]), float(record["expires_at"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("skipping an unreadable console session record")

    @property
    def started(self) -> bool:
        return self._topic.started

    def __len__(self) -> int:
        """Sessions on the topic as this worker has read it, expired ones included until swept."""
        return len(self._records)

    async def start(self) -> None:
        await self._topic.start()

    async def stop(self) -> None:
        await self._topic.stop()

    async def open(self, token: str) -> Session:
        """A new session for a configured `token` (check it with `matching_token` first)."""
        session_id = secrets.token_urlsafe(32)
        expires_at = self.clock() + self.lifetime_seconds
        record = {"token_mac": _token_mac(session_id, token), "expires_at": expires_at}
        await self._topic.write(_record_key(session_id), orjson.dumps(record))
        return Session(session_id, token, expires_at)

    def find(self, session_id: str) -> Session | None:
        """The live session named by a cookie, or None (unknown, expired, logged out, or its token
        is no longer configured)."""
        record = self._records.get(_record_key(session_id))
        if record is None:
            return None
        token_mac, expires_at = record
        if expires_at <= self.clock():
            return None
        found = None
        for token in self.tokens:  # every token, each in constant time
            if hmac.compare_digest(_token_mac(session_id, token), token_mac):
                found = token
        return Session(session_id, found, expires_at) if found is not None else None

    async def end(self, session: Session) -> None:
        await self._topic.write(_record_key(session.session_id), None)

    async def remove_expired(self) -> int:
        """Tombstone the expired sessions (every worker may do it: a second tombstone changes nothing)."""
        now = self.clock()
        expired = [key for key, (_, expires_at) in list(self._records.items()) if expires_at <= now]
        for key in expired:
            await self._topic.write(key, None)
        return len(expired)
