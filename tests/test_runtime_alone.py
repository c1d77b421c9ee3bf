"""The runtime alone: the wheel a platform installs holds `intent` and nothing of `training/`, needs
no torch, and runs the demo (embedded broker, worker, simulated shoppers, signed webhooks) in a fresh
virtual environment with nothing else in it, outside the repository.

The wheel's dependencies come from the package index (pip's cache keeps repeated runs short)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from intent.broker import BrokerError, EmbeddedBroker, free_port
from intent.settings import REPO_DIR

SHIPPED_MODEL = REPO_DIR / "models" / "intent-gru"


@dataclass(frozen=True)
class RuntimeInstall:
    wheel: Path
    python: Path
    install_seconds: float


def _run(command: list[str | Path], env: dict[str, str] | None = None) -> None:
    completed = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    assert completed.returncode == 0, f"{command} failed:\n{completed.stdout}\n{completed.stderr}"


def _figures(pattern: str, summary: str) -> tuple[int, ...]:
    found = re.search(pattern, summary)
    assert found, f"no {pattern!r} in the demo's summary:\n{summary}"
    return tuple(int(group) for group in found.groups())


def _clean_environment() -> dict[str, str]:
    """This process's environment without what would put the repository or its venv on the path."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not name.startswith("INTENT_")
    }


def test_no_runtime_module_imports_the_training_package() -> None:
    # Covers every command, also those the demo below does not run (replay, collector, receiver).
    offenders = []
    for module in sorted((REPO_DIR / "intent").rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(), str(module))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            offenders += [f"{module.relative_to(REPO_DIR)}: {n}" for n in names if n.split(".")[0] == "training"]
    assert not offenders


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> RuntimeInstall:
    # Built from a copy of the sources, training/ included, so that pyproject's package list is
    # what keeps it out, and a stale build/ folder in the clone cannot leak into the wheel.
    root = tmp_path_factory.mktemp("runtime")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_DIR / name, source / name)
    for package in ("intent", "training"):
        shutil.copytree(REPO_DIR / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", root / "dist", source])
    (wheel,) = (root / "dist").glob("intent-*.whl")

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    started = time.perf_counter()
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--prefer-binary", wheel],
        env=_clean_environment(),
    )
    return RuntimeInstall(wheel, python, time.perf_counter() - started)


@pytest.mark.slow
def test_the_runtime_wheel_holds_no_training_code_and_requires_no_torch(runtime: RuntimeInstall) -> None:
    with zipfile.ZipFile(runtime.wheel) as wheel:
        names = wheel.namelist()
        metadata = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "intent/simulate.py" in names and "intent/domains/demo/intents.json" in names
    assert "intent/console/static/console.js" in names  # the console, without the README's screenshots
    assert not [n for n in names if n.startswith("intent/console/screenshots/")]
    assert not [n for n in names if n.startswith("training/")]
    unconditional = [
        line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert unconditional and not [line for line in unconditional if re.search(r"\btorch\b", line)]


@pytest.mark.slow
def test_the_runtime_install_has_neither_torch_nor_the_training_package(
    runtime: RuntimeInstall, tmp_path: Path
) -> None:
    print(f"runtime install with its dependencies: {runtime.install_seconds:.1f} s")
    for module in ("torch", "training"):
        completed = subprocess.run(
            [runtime.python, "-c", f"import {module}"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=_clean_environment(),
            check=False,
        )
        assert completed.returncode != 0 and f"No module named '{module}'" in completed.stderr


@pytest.mark.slow
def test_the_demo_runs_on_the_runtime_alone(runtime: RuntimeInstall, tmp_path: Path) -> None:
    try:
        with EmbeddedBroker(port=free_port()):
            pass
    except BrokerError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the embedded broker cannot start on CI: {error}")
        pytest.skip(f"the embedded broker cannot start here: {error}")

    completed = subprocess.run(
        [runtime.python, "-m", "intent", "demo", "--shoppers", "20", "--timeout", "180"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # outside the repository: its training/ folder is not on the path
        env={
            **_clean_environment(),
            "INTENT_MODEL_DIR": str(SHIPPED_MODEL),
            "INTENT_BROKER_URL": f"embedded://127.0.0.1:{free_port()}",
        },
        check=False,
        timeout=400,
    )
    output = completed.stdout
    assert completed.returncode == 0, output + completed.stderr
    summary = output[output.index("\nsummary") :]
    print(summary)
    (shifts,) = _figures(r"intent shifts\s+(\d+)", summary)
    verified, bad = _figures(r"webhooks received\s+(\d+) signed and verified \((\d+) bad\)", summary)
    assert shifts > 0
    assert 0 < verified <= shifts and bad == 0
    assert "coffee_ritual -> cold_flu_care detected" in summary
    assert "dead-lettered         3 (malformed on purpose: 3)" in summary
