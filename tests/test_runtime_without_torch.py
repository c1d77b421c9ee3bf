"""The shipped model needs no torch: with torch blocked it still scores what its card says.

That the whole runtime (worker, demo, webhooks) runs without torch or training code is
`test_runtime_alone.py`'s job, on a fresh install of the wheel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from intent.settings import REPO_DIR

SHIPPED = REPO_DIR / "models" / "intent-gru"

# Run in a fresh interpreter where any import of torch fails, as on a runtime-only install.
WITHOUT_TORCH = """
import sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not available at runtime")
sys.meta_path.insert(0, BlockTorch())
"""

REPRODUCE_ACCURACY = """
import numpy as np, orjson
from intent.model import IntentModel
from intent.simulate import Regime
from intent.taxonomy import load_taxonomy
from training.data import encode
from training.evaluate import simulated_test_set
model = IntentModel.load(__import__("pathlib").Path(sys.argv[1]))
training = model.metadata["training"]
sequences, _ = simulated_test_set(
    load_taxonomy(), training["test_seed"], training["test_shoppers"], Regime(**training["regime"])
)
distributions = model.run_sequences(encode(model.featurizer, sequences))
correct = sum(int((d.argmax(1) == s.labels).sum()) for d, s in zip(distributions, sequences))
print(orjson.dumps({"accuracy": correct / sum(len(s.labels) for s in sequences),
                    "torch_loaded": "torch" in sys.modules}).decode())
"""


def run_without_torch(code: str, *args: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH + code, *args],
        capture_output=True,
        text=True,
        cwd=REPO_DIR,
        check=False,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    return orjson.loads(completed.stdout.strip().splitlines()[-1])


def test_torch_is_really_blocked_in_the_runtime_check() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH + "import torch"], capture_output=True, text=True, check=False
    )
    assert "torch is not available at runtime" in completed.stderr


def test_the_shipped_model_reproduces_its_recorded_accuracy_without_torch() -> None:
    recorded = orjson.loads((SHIPPED / "metrics.json").read_bytes())["accuracy"]
    result = run_without_torch(REPRODUCE_ACCURACY, str(SHIPPED))
    assert result["torch_loaded"] is False
    assert result["accuracy"] == pytest.approx(recorded, abs=0.01)


def test_the_shipped_model_card_and_plots_are_there() -> None:
    for name in ("MODEL_CARD.md", "confusion_matrix.png", "detection_delay.png", "calibration.png"):
        assert (SHIPPED / name).stat().st_size > 0, name
    card = (SHIPPED / "MODEL_CARD.md").read_text()
    metadata = orjson.loads((SHIPPED / "metadata.json").read_bytes())
    assert metadata["model_version"] in card


def test_the_shipped_model_is_within_its_size_budget() -> None:
    metadata = orjson.loads((SHIPPED / "metadata.json").read_bytes())
    assert metadata["architecture"]["parameters"] <= 1_000_000
    assert all(Path(SHIPPED / name).stat().st_size <= 4 * 1024 * 1024 for name in metadata["files"])
