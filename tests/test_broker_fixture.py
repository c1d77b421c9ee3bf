"""Tests that need the broker never pass in CI by not running: there, a broker that cannot start fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from intent.settings import REPO_DIR
from tests.conftest import broker_unavailable

NEEDS_THE_BROKER = """
def test_needs_the_broker(broker):
    assert broker.port
"""


def test_in_ci_a_broker_that_cannot_start_fails_the_run() -> None:
    with pytest.raises(pytest.fail.Exception, match="cannot start here: no binary"):
        broker_unavailable("no binary", {"CI": "true"})


def test_outside_ci_a_broker_that_cannot_start_skips_its_tests_with_the_reason() -> None:
    with pytest.raises(pytest.skip.Exception, match="cannot start here: no binary"):
        broker_unavailable("no binary", {})
    with pytest.raises(pytest.skip.Exception):
        broker_unavailable("no binary", {"CI": "false"})


def run_with_an_unusable_broker(tmp_path: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    """A tiny test session whose one test needs the broker, with a broker binary that cannot run."""
    binary = tmp_path / "tansu"
    binary.write_text("not a program")  # and not executable
    (tmp_path / "test_tiny.py").write_text(NEEDS_THE_BROKER)
    base = {key: value for key, value in os.environ.items() if key != "CI"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", "-rs", "test_tiny.py"],
        cwd=tmp_path,
        env={**base, "PYTHONPATH": str(REPO_DIR), "INTENT_BROKER_BIN": str(binary), **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_test_session_in_ci_fails_when_the_broker_binary_cannot_run(tmp_path: Path) -> None:
    session = run_with_an_unusable_broker(tmp_path, CI="true")

    assert session.returncode == pytest.ExitCode.TESTS_FAILED, session.stdout + session.stderr
    assert "the embedded broker cannot start here: cannot run the broker binary" in session.stdout


def test_a_test_session_outside_ci_skips_saying_why(tmp_path: Path) -> None:
    session = run_with_an_unusable_broker(tmp_path)

    assert session.returncode == pytest.ExitCode.OK, session.stdout + session.stderr
    assert "1 skipped" in session.stdout
    assert "cannot run the broker binary" in session.stdout
