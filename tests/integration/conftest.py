"""A real Kafka-protocol broker (the embedded Tansu) once per test session, and worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer

from intent.broker import EmbeddedBroker, free_port
from intent.kafka import ensure_topics
from intent.settings import REPO_DIR

PARTITIONS = 4
API_TOKEN = "test-token"


@dataclass
class Deployment:
    """One worker deployment: its app id (consumer group), topics and processes."""

    broker: EmbeddedBroker
    root: Path
    app_id: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:8]}")
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    web_ports: list[int] = field(default_factory=list)  # of each started worker, in order
    log_files: list[IO[bytes]] = field(default_factory=list)

    @property
    def events_topic(self) -> str:
        return f"{self.app_id}-shopper-events"

    @property
    def changes_topic(self) -> str:
        return f"{self.app_id}-intent-changes"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.app_id}-shopper-events-dlq"

    @property
    def webhook_dead_letter_topic(self) -> str:
        return f"{self.app_id}-webhooks-dlq"

    def environment(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "INTENT_BROKER_URL": self.broker.url,
            "INTENT_APP_ID": self.app_id,
            "INTENT_EVENTS_TOPIC": self.events_topic,
            "INTENT_CHANGES_TOPIC": self.changes_topic,
            "INTENT_DEAD_LETTER_TOPIC": self.dead_letter_topic,
            "INTENT_SUBSCRIPTIONS_TOPIC": f"{self.app_id}-subscriptions",
            "INTENT_WEBHOOK_DEAD_LETTER_TOPIC": self.webhook_dead_letter_topic,
            "INTENT_WEBHOOK_ATTEMPTS_TOPIC": f"{self.app_id}-webhook-attempts",
            "INTENT_CONSOLE_SESSIONS_TOPIC": f"{self.app_id}-console-sessions",
            # each deployment its own: another test's erasure requests must not reach these workers
            "INTENT_ERASURES_TOPIC": f"{self.app_id}-erasures",
            "INTENT_IDENTITIES_TOPIC": f"{self.app_id}-identities",
            "INTENT_API_TOKENS": API_TOKEN,
            "INTENT_WEBHOOK_ALLOW_PRIVATE_URLS": "true",
            "INTENT_HOLDOUT_SHARE": "0",
            "INTENT_TOPIC_PARTITIONS": str(PARTITIONS),
            "INTENT_WEB_PORT": str(free_port()),
            "INTENT_DATA_DIR": str(self.root / f"worker-{len(self.processes)}"),
            "INTENT_LOG_LEVEL": "INFO",
            # Tansu holds a group join for half the session timeout: 10 s keeps joins at ~5 s
            "INTENT_GROUP_SESSION_TIMEOUT_SECONDS": "10",
            **extra,
        }

    def start_worker(self, **extra: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"worker-{len(self.processes)}.log").open("wb")
        self.log_files.append(log)
        environment = self.environment(**extra)
        self.web_ports.append(int(environment["INTENT_WEB_PORT"]))
        process = subprocess.Popen(
            [sys.executable, "-m", "intent", "worker"],
            env=environment,
            cwd=REPO_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.root.glob("worker-*.log")))

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.log_files:
            log.close()


def new_deployment(broker: EmbeddedBroker, root: Path) -> Deployment:
    """A deployment with its topics created, no worker started yet."""
    deployed = Deployment(broker, root)
    asyncio.run(
        ensure_topics(
            broker.bootstrap_servers,
            [
                deployed.events_topic,
                deployed.changes_topic,
                deployed.dead_letter_topic,
                deployed.webhook_dead_letter_topic,
            ],
            PARTITIONS,
        )
    )
    return deployed


@pytest.fixture
def deployment(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Deployment]:
    deployed = new_deployment(broker, tmp_path)
    yield deployed
    deployed.stop_all()


async def read_until(
    bootstrap_servers: str,
    topic: str,
    done: Callable[[list[dict[str, Any]]], bool],
    timeout: float,
) -> list[dict[str, Any]]:
    """Every JSON record of `topic` from the start, until `done(records)` or the timeout."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap_servers, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    records: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while not done(records):
                batches = await consumer.getmany(timeout_ms=500)
                for messages in batches.values():
                    records += [orjson.loads(m.value) for m in messages]
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return records


@asynccontextmanager
async def http_receiver(handle: Callable[[web.Request], Any]) -> AsyncIterator[str]:
    """A local webhook endpoint answering POST /hooks with `handle`; yields its URL."""
    app = web.Application()
    app.router.add_post("/hooks", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    finally:
        await runner.cleanup()
