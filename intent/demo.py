"""`intent demo`: the whole product in one command, on the embedded broker.

Starts the broker (unless one listens already), a worker process, and sends simulated shoppers,
among them the coffee -> tea -> cold story and a few malformed events, then prints the intent
shifts and dead letters as they arrive and a summary, and shuts everything down (with `--stay`, once
Ctrl-C says so: the worker's console, whose address it prints, stays up meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer

from intent.broker import free_port
from intent.cli import broker_for
from intent.kafka import ensure_topics, wait_for_lag_zero
from intent.replay import ReplayReport, replay
from intent.settings import Settings
from intent.simulate import Simulator, coffee_tea_cold_story
from intent.webhooks.signing import SignatureError, verify

MALFORMED = [
    b'{"event": "Product Viewed", "userId": "broken-1", "timestamp": "2026-01-28T11:00:00Z",'
    b' "properties": {"price": "cheap"}}',
    b"this is not JSON",
    b'{"event": "Product Viewed", "timestamp": "2026-01-28T11:00:00Z"}',
]


def demo_events(shoppers: int) -> list[bytes]:
    simulator = Simulator(seed=2026)
    people = [coffee_tea_cold_story(simulator.world), *simulator.shoppers(shoppers)]
    events = sorted((event for person in people for event in person.events), key=lambda e: e["timestamp"])
    lines = [orjson.dumps(event) for event in events]
    # The malformed events go in among the good ones: the good ones around them must still count.
    for position, raw in zip((len(lines) // 4, len(lines) // 2, 3 * len(lines) // 4), MALFORMED, strict=True):
        lines.insert(position, raw)
    return lines


class DemoReceiver:
    """The commerce platform's side, for the demo: a local endpoint that checks each signature."""

    def __init__(self) -> None:
        self.secret = ""
        self.received: list[dict[str, Any]] = []
        self.bad_signatures = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(self.secret, request.headers, body)
        except SignatureError as error:
            self.bad_signatures += 1
            print(f"  webhook REJECTED: {error}", flush=True)
            return web.Response(status=401)
        payload = orjson.loads(body)
        self.received.append(payload)
        if payload.get("type") == "intent.changed":
            offers = ", ".join(s["name"] for s in payload["suggestions"][:3]) or "(holdout: none)"
            print(
                f"  webhook {payload['shopper_id']:<24} {payload['to_intent']['id']:<17} signature ok; "
                f"suggests {offers}",
                flush=True,
            )
        return web.Response(status=204)


def receiver_app(receiver: DemoReceiver) -> web.Application:
    """The receiver's routes: `/hooks` takes signed deliveries (401 otherwise), `/healthz` answers alive."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    app = web.Application()
    app.router.add_post("/hooks", receiver.handle)
    app.router.add_get("/healthz", healthz)
    return app


async def subscribe(
    api_url: str, token: str, url: str, timeout: float, intents: list[str] | None = None
) -> dict[str, Any]:
    """Subscribe `url` through a worker's API once it serves (it answers 503 while starting)."""
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.post(
                    f"{api_url}/v1/subscriptions",
                    json={"url": url, "description": "intent demo receiver", "intents": intents or []},
                    headers={"Authorization": f"Bearer {token}"},
                ) as response:
                    if response.status == 201:
                        return await response.json()
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(1)


async def run_receiver(host: str, port: int, api_url: str, token: str, public_url: str) -> None:
    """A standing demo receiver (the docker stack's): subscribes itself, then logs what it gets."""
    receiver = DemoReceiver()
    runner = web.AppRunner(receiver_app(receiver), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"demo receiver on {host}:{port}; subscribing {public_url} at {api_url} ...", flush=True)
    subscription = await subscribe(api_url, token, public_url, timeout=600)
    receiver.secret = subscription["secret"]
    print(f"subscribed: {subscription['id']}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def describe(change: dict[str, Any]) -> str:
    source = change["from_intent"]["id"] if change["from_intent"] else "(no intent)"
    trigger = next((e.get("name") or e.get("query") or e["event"] for e in reversed(change["evidence"])), "")
    return (
        f"  shift  {change['shopper_id']:<24} {source:>17} -> {change['to_intent']['id']:<17} "
        f"{change['to_intent']['confidence']:.2f}  after {trigger!r} ({change['event_time'][:16]})"
    )


async def _run(settings: Settings, shoppers: int, timeout: float, stay: bool) -> int:
    run_id = uuid.uuid4().hex[:8]
    app_id = f"intent-demo-{run_id}"
    topics = {
        "INTENT_EVENTS_TOPIC": f"demo-{run_id}-shopper-events",
        "INTENT_CHANGES_TOPIC": f"demo-{run_id}-intent-changes",
        "INTENT_DEAD_LETTER_TOPIC": f"demo-{run_id}-shopper-events-dlq",
        "INTENT_WEBHOOK_DEAD_LETTER_TOPIC": f"demo-{run_id}-webhooks-dlq",
        "INTENT_SUBSCRIPTIONS_TOPIC": f"demo-{run_id}-subscriptions",
        "INTENT_WEBHOOK_ATTEMPTS_TOPIC": f"demo-{run_id}-webhook-attempts",
        "INTENT_CONSOLE_SESSIONS_TOPIC": f"demo-{run_id}-console-sessions",
    }
    bootstrap = settings.bootstrap_servers
    compacted = ("INTENT_SUBSCRIPTIONS_TOPIC", "INTENT_CONSOLE_SESSIONS_TOPIC")  # created by their followers
    await ensure_topics(bootstrap, [t for k, t in topics.items() if k not in compacted], settings.topic_partitions)
    web_port, token = free_port(), uuid.uuid4().hex
    lines = demo_events(shoppers)
    print(
        f"intent demo: {len(lines):,} events from {shoppers + 1} shoppers "
        f"(the coffee -> tea -> cold story among them) on {bootstrap}"
    )

    with tempfile.TemporaryDirectory(prefix="intent-demo-") as data_dir:
        environment = {
            # The embedded broker holds a consumer group's join for half the session timeout; one
            # worker has no failover to wait for, so a short timeout only makes the start quicker.
            "INTENT_GROUP_SESSION_TIMEOUT_SECONDS": "10",
            **os.environ,
            **topics,
            "INTENT_BROKER_URL": f"kafka://{bootstrap}",
            "INTENT_APP_ID": app_id,
            "INTENT_DATA_DIR": data_dir,
            "INTENT_LOG_LEVEL": "ERROR",  # the demo prints what matters itself
            "INTENT_WEB_PORT": str(web_port),
            "INTENT_API_TOKENS": token,
            "INTENT_WEBHOOK_ALLOW_PRIVATE_URLS": "true",  # the receiver is on this machine
        }
        receiver = DemoReceiver()
        runner = web.AppRunner(receiver_app(receiver), access_log=None)
        await runner.setup()
        receiver_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", receiver_port).start()
        changes: list[dict[str, Any]] = []
        dead_letters: list[dict[str, Any]] = []
        consumer = AIOKafkaConsumer(
            topics["INTENT_CHANGES_TOPIC"],
            topics["INTENT_DEAD_LETTER_TOPIC"],
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
        )
        await consumer.start()

        async def watch() -> None:
            async for message in consumer:
                record = orjson.loads(message.value)
                if message.topic == topics["INTENT_CHANGES_TOPIC"]:
                    changes.append(record)
                    print(describe(record), flush=True)
                else:
                    dead_letters.append(record)
                    print(f"  dead letter  offset {record['offset']}: {record['reason']}", flush=True)

        watcher = asyncio.create_task(watch())
        started = time.perf_counter()
        worker: subprocess.Popen[bytes] | None = None
        try:
            # Started inside the `try`, so that a stop signal at any point after still stops it.
            worker = subprocess.Popen([sys.executable, "-m", "intent", "worker"], env=environment)
            print("the worker starts and joins its consumer group (about 15 s) ...", flush=True)
            print(f"console: http://127.0.0.1:{web_port}/console/ (log in with the API token {token})", flush=True)
            subscription = await subscribe(
                f"http://127.0.0.1:{web_port}", token, f"http://127.0.0.1:{receiver_port}/hooks", timeout
            )
            receiver.secret = subscription["secret"]
            print(f"subscribed the demo receiver: {subscription['id']} (signing secret whsec_…)", flush=True)
            report = await replay(lines, bootstrap, topics["INTENT_EVENTS_TOPIC"])
            print(f"sent {report.sent:,} events; waiting for the worker to catch up ...", flush=True)
            await wait_for_lag_zero(bootstrap, app_id, topics["INTENT_EVENTS_TOPIC"], timeout)
            await wait_for_lag_zero(bootstrap, app_id, topics["INTENT_CHANGES_TOPIC"], timeout)
            await asyncio.sleep(2.0)  # the last webhooks are on their way to the receiver
            outcome = summarize(report, time.perf_counter() - started, changes, dead_letters, receiver)
            if stay:
                print(
                    f"\nthe worker and its console stay up: http://127.0.0.1:{web_port}/console/ "
                    f"(API token {token}); Ctrl-C stops them",
                    flush=True,
                )
                await asyncio.Event().wait()
            return outcome
        except TimeoutError as error:
            print(f"demo failed: {error}")
            return 1
        finally:
            watcher.cancel()
            await consumer.stop()
            await runner.cleanup()
            if worker is not None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()


def summarize(
    report: ReplayReport,
    elapsed: float,
    changes: list[dict[str, Any]],
    dead_letters: list[dict[str, Any]],
    receiver: DemoReceiver,
) -> int:
    """Print the demo's summary; returns its exit status (0: the story was detected and delivered)."""
    webhooks = [w for w in receiver.received if w.get("type") == "intent.changed"]
    story = [c for c in changes if c["shopper_id"] == "story-coffee-tea-cold"]
    cold = next((c for c in story if c["to_intent"]["id"] == "cold_flu_care"), None)
    by_intent = Counter(c["to_intent"]["id"] for c in changes)
    print("\nsummary")
    print(f"  events processed      {report.sent - len(dead_letters):,} of {report.sent:,} in {elapsed:.1f} s")
    print(f"  dead-lettered         {len(dead_letters)} (malformed on purpose: {len(MALFORMED)})")
    print(f"  intent shifts         {len(changes)}: " + ", ".join(f"{k} {v}" for k, v in by_intent.most_common()))
    held_out = sum(1 for w in webhooks if w.get("holdout"))
    print(
        f"  webhooks received     {len(webhooks)} signed and verified ({receiver.bad_signatures} bad), "
        f"{held_out} for holdout shoppers (no suggestions); "
        f"{len(changes) - len(webhooks)} shifts not delivered (consent or frequency cap)"
    )
    story_webhook = next((w for w in webhooks if cold and w["id"] == cold["id"]), None)
    if cold:
        print(
            f"  the story             coffee_ritual -> cold_flu_care detected at {cold['event_time']} "
            f"after {cold['evidence'][-1].get('name') or cold['evidence'][-1].get('query')!r}"
        )
    else:
        print("  the story             the cold & flu shift was NOT detected")
    if story_webhook:
        print("  its webhook suggests  " + ", ".join(s["name"] for s in story_webhook["suggestions"]))
    return 0 if cold and story_webhook and len(dead_letters) == len(MALFORMED) else 1


def run_demo(settings: Settings, shoppers: int, timeout: float, stay: bool = False) -> int:
    logging.getLogger().setLevel(logging.WARNING)  # the live log is ours; keep library chatter out
    with broker_for(settings):
        return asyncio.run(_run(settings, shoppers, timeout, stay))
