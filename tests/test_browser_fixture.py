"""The browser tests never pass in CI by not running: there, a browser that cannot start fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from intent.settings import REPO_DIR
from tests.conftest import browser_unavailable

NEEDS_THE_BROWSER = """
async def test_needs_the_browser(chromium):
    assert chromium.version
"""


def test_in_ci_a_browser_that_cannot_start_fails_the_run() -> None:
    with pytest.raises(pytest.fail.Exception, match="cannot start here: no chromium"):
        browser_unavailable("no chromium", {"CI": "true"})


def test_outside_ci_a_browser_that_cannot_start_skips_its_tests_with_the_reason() -> None:
    with pytest.raises(pytest.skip.Exception, match="cannot start here: no chromium"):
        browser_unavailable("no chromium", {})


def run_with_an_unusable_browser(tmp_path: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    """A tiny test session whose one test needs the browser, with a browser that cannot run."""
    browser = tmp_path / "chromium"
    browser.write_text("not a program")  # and not executable
    (tmp_path / "test_tiny.py").write_text(NEEDS_THE_BROWSER)
    base = {key: value for key, value in os.environ.items() if key != "CI"}
    return subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"),
            *("-o", "asyncio_mode=auto", "-q", "-rs", "test_tiny.py"),
        ],
        cwd=tmp_path,
        env={**base, "PYTHONPATH": str(REPO_DIR), "CHROMIUM_PATH": str(browser), **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_test_session_in_ci_fails_when_the_browser_cannot_start(tmp_path: Path) -> None:
    session = run_with_an_unusable_browser(tmp_path, CI="true")

    assert session.returncode == pytest.ExitCode.TESTS_FAILED, session.stdout + session.stderr
    assert "the browser" in session.stdout and "cannot start here" in session.stdout


def test_a_test_session_outside_ci_skips_saying_why(tmp_path: Path) -> None:
    session = run_with_an_unusable_browser(tmp_path)

    assert session.returncode == pytest.ExitCode.OK, session.stdout + session.stderr
    assert "1 skipped" in session.stdout and "cannot start here" in session.stdout
