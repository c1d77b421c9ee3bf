"""`/readyz` says the model is loaded only when it is: it loaded, answered a probe, and no reload failed."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from intent.app import create_worker
from intent.model import SEQUENCE_FILE, STEP_FILE, IntentModel, ModelError, sha256_of
from intent.settings import REPO_DIR, Settings

SHIPPED = REPO_DIR / "models" / "intent-gru"


def model_with_a_wrong_step_file(directory: Path) -> Path:
    """The shipped model with the sequence model exported as its step model by mistake: the files
    match their recorded sha256 and onnxruntime opens both, but the step model cannot serve."""
    shutil.copytree(SHIPPED, directory)
    shutil.copyfile(directory / SEQUENCE_FILE, directory / STEP_FILE)
    metadata = orjson.loads((directory / "metadata.json").read_bytes())
    metadata["files"][STEP_FILE]["sha256"] = sha256_of(directory / STEP_FILE)
    metadata["model_version"] += "-broken"
    (directory / "metadata.json").write_bytes(orjson.dumps(metadata))
    return directory


def test_a_model_that_fails_its_probe_inference_does_not_load(tmp_path: Path) -> None:
    broken = model_with_a_wrong_step_file(tmp_path / "broken")

    with pytest.raises(ModelError, match="does not answer a probe inference"):
        IntentModel.load(broken)


async def test_a_failing_model_reload_makes_the_worker_not_ready_and_keeps_the_old_model(tmp_path: Path) -> None:
    good = IntentModel.load(SHIPPED)
    worker = create_worker(Settings(data_dir=tmp_path / "worker"), good)
    broken_dir = model_with_a_wrong_step_file(tmp_path / "broken")
    # Opened without `load`, which would refuse it: as a reload that skipped the checks would.
    broken = IntentModel(broken_dir, orjson.loads((broken_dir / "metadata.json").read_bytes()))
    client = TestClient(TestServer(worker.app.web.web_app))
    await client.start_server()
    try:

        async def model_loaded() -> bool:
            async with client.get("/readyz") as response:
                return (await response.json())["checks"]["model_loaded"]

        assert await model_loaded() is True
        with pytest.raises(ModelError, match="probe"):
            worker.tracker.activate(broken)
        assert await model_loaded() is False
        assert worker.tracker.model is good  # the previous model goes on serving

        worker.tracker.activate(IntentModel.load(SHIPPED))
        assert await model_loaded() is True
    finally:
        await client.close()
