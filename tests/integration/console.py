"""Helpers of the console's integration and browser tests: a worker's console, logged in over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from tests.integration.conftest import API_TOKEN

CONSOLE_START_SECONDS = 150.0  # the worker joins its group and starts its services first


async def wait_for_console(base: str, timeout: float = CONSOLE_START_SECONDS) -> None:
    """Return once the worker at `base` serves its console (a call without a session gets 401, not
    503 or no connection)."""
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{base}/console/api/session") as response:
                    if response.status == 401:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.5)


async def log_in(http: aiohttp.ClientSession, base: str, token: str = API_TOKEN) -> dict[str, Any]:
    """Log `http` in as the console's page does; returns the session (with its `csrf_token`)."""
    async with http.post(f"{base}/console/api/login", json={"token": token}, headers={"Origin": base}) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def live_view_until(
    http: aiohttp.ClientSession, base: str, done: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    """Follow the live view's server-sent events, merged as the page merges them, until `done`."""
    view: dict[str, Any] | None = None
    async with asyncio.timeout(timeout), http.get(f"{base}/console/api/live") as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        event = None
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "update":
                update = orjson.loads(line.removeprefix("data: "))
                if view is not None:
                    for kind in ("changes", "dead_letters", "webhook_dead_letters", "webhook_failures"):
                        update[kind] = view[kind] + update[kind]
                view = update
                if done(view):
                    return view
    raise AssertionError("the live view ended")
