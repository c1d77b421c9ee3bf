"""Every command that starts the embedded broker stops it when it is stopped, however it is stopped.

SIGTERM is how process managers, CI and container runtimes stop things, SIGINT is a terminal's
Ctrl-C, and SIGKILL leaves no chance to clean up: in every case no broker may outlive its command
and keep holding its port. Each command runs as its own process, as an operator starts it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from intent.broker import free_port, wait_for_kafka
from intent.settings import REPO_DIR

pytestmark = pytest.mark.integration

START_SECONDS = 90.0
STOP_SECONDS = 40.0


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (command) state ppid ...": the command may hold spaces and parentheses
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, read from /proc."""
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and parent_of(int(entry.name)) in frontier
        }
        frontier = children - found
        found |= children
    return found


def start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def is_running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (a dead process its new parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Commands:
    """The commands a test starts, and every process seen below them. On teardown whatever of them
    still runs is killed, so a failing test leaves nothing behind either: an orphan is no longer
    below its command, so the processes are remembered (with their start time: a pid may be reused)."""

    def __init__(self, tmp_path: Path) -> None:
        self.log_path = tmp_path / "command.log"
        self.data_dir = tmp_path / "worker"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.seen: set[tuple[int, str | None]] = set()

    def start(self, command: list[str], broker_port: int, **extra: str) -> subprocess.Popen[bytes]:
        environment = {
            **os.environ,
            "INTENT_BROKER_URL": f"embedded://127.0.0.1:{broker_port}",
            "INTENT_APP_ID": f"test-stop-{uuid.uuid4().hex[:8]}",
            "INTENT_DATA_DIR": str(self.data_dir),
            "INTENT_WEB_PORT": str(free_port()),
            "INTENT_LOG_LEVEL": "WARNING",
            "INTENT_GROUP_SESSION_TIMEOUT_SECONDS": "10",
            **extra,
        }
        with self.log_path.open("wb") as log:  # the command holds its own copy
            process = subprocess.Popen(
                [sys.executable, "-m", "intent", *command],
                env=environment,
                cwd=REPO_DIR,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def below(self, process: subprocess.Popen[bytes]) -> set[int]:
        pids = descendants(process.pid)
        self.seen.update((pid, start_time(pid)) for pid in pids)
        return pids

    def brokers_below(self, process: subprocess.Popen[bytes]) -> set[int]:
        """The Tansu processes below `process` (the broker runs as `<binary> broker --listener-url ...`)."""
        found = set()
        for pid in self.below(process):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--listener-url" in command:
                found.add(pid)
        return found

    def wait_for_broker(self, process: subprocess.Popen[bytes], port: int) -> set[int]:
        """Once the command's broker answers, the pids of its broker processes."""
        wait_for_kafka(f"127.0.0.1:{port}", START_SECONDS)
        pids = self.brokers_below(process)
        assert pids, f"the command's broker is not its child:\n{self.log()}"
        return pids

    def stop_and_check(self, process: subprocess.Popen[bytes], stop_signal: int, port: int) -> int:
        """Send `stop_signal`, wait for the command to end: nothing it started may be left, its broker's
        port is free. Returns the command's exit code."""
        everything = self.below(process)
        process.send_signal(stop_signal)
        code = process.wait(STOP_SECONDS)
        deadline = time.monotonic() + STOP_SECONDS
        # the kernel closes a killed process's sockets as it exits: give it a moment
        while (any(is_running(pid) for pid in everything) or not port_is_free(port)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in everything if is_running(pid)], f"processes outlived their command:\n{self.log()}"
        assert port_is_free(port)
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def kill_leftovers(self) -> None:
        for process in self.processes:
            self.below(process)
            process.kill()
            process.wait()
        for pid, started_at in self.seen:
            if is_running(pid) and start_time(pid) == started_at:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def commands(tmp_path: Path) -> Iterator[Commands]:
    started = Commands(tmp_path)
    yield started
    started.kill_leftovers()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_the_broker_command_stops_its_broker_and_ends_by_the_signal(
    stop_signal: signal.Signals, commands: Commands
) -> None:
    port = free_port()
    process = commands.start(["broker", "--port", str(port)], port)
    commands.wait_for_broker(process, port)

    assert commands.stop_and_check(process, stop_signal, port) == -stop_signal


def test_a_killed_broker_command_takes_its_broker_with_it(commands: Commands) -> None:
    port = free_port()
    process = commands.start(["broker", "--port", str(port)], port)
    commands.wait_for_broker(process, port)

    assert commands.stop_and_check(process, signal.SIGKILL, port) == -signal.SIGKILL


def test_a_worker_stopped_while_it_starts_stops_the_broker_it_started(commands: Commands) -> None:
    port = free_port()
    process = commands.start(["worker"], port)
    commands.wait_for_broker(process, port)

    # By the signal, or 0 if Faust's worker had started and stopped gracefully on it (its own way).
    assert commands.stop_and_check(process, signal.SIGTERM, port) in (-signal.SIGTERM, 0)


def test_a_running_worker_stopped_with_ctrl_c_stops_the_broker_it_started(commands: Commands) -> None:
    port, web_port = free_port(), free_port()
    process = commands.start(["worker"], port, INTENT_WEB_PORT=str(web_port))
    commands.wait_for_broker(process, port)
    deadline = time.monotonic() + START_SECONDS
    while True:  # the worker's web server answers once Faust runs, with its own signal handlers
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/healthz", timeout=1):
                break
        except OSError:
            assert time.monotonic() < deadline, commands.log()
            time.sleep(0.5)

    assert commands.stop_and_check(process, signal.SIGINT, port) in (-signal.SIGINT, 0)


def test_the_demo_stops_its_broker_and_its_worker(commands: Commands) -> None:
    port = free_port()
    process = commands.start(["demo", "--shoppers", "2", "--timeout", "60"], port)
    brokers = commands.wait_for_broker(process, port)
    deadline = time.monotonic() + START_SECONDS
    while not commands.below(process) - brokers:  # its worker process is started too
        assert time.monotonic() < deadline, commands.log()
        time.sleep(0.2)

    assert commands.stop_and_check(process, signal.SIGTERM, port) == -signal.SIGTERM
