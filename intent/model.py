"""The shipped model at serving time: onnxruntime only, never torch.

A model directory holds `model.onnx` (a whole sequence -> a distribution after every event),
`step.onnx` (one event + the window's GRU state -> distribution + new state, what the stream
runs) and `metadata.json`, which also records the domain the model was trained on (the worker checks
it against the configured domain: `intent.domain.check_model_domain`). Loading refuses a directory
whose files do not match their recorded sha256 or whose feature spec differs from this code's, with
a message that says what to do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

from intent.detector import DetectorConfig
from intent.features import (
    FEATURE_COLUMNS,
    FEATURE_SPEC_VERSION,
    Featurizer,
    Vocabulary,
    padded_batches,
)

SEQUENCE_FILE = "model.onnx"
STEP_FILE = "step.onnx"
METADATA_FILE = "metadata.json"
CURRENT_INTENT, NEXT_BASKET = "current_intent", "next_basket"


class ModelError(RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class IntentInfo:
    id: str
    label: str
    sensitive: bool


@dataclass(frozen=True)
class ModelDomain:
    """The domain a model was trained on, as its metadata records it (`intent.domain.model_domain_record`)."""

    name: str
    taxonomy_sha256: str


class IntentModel:
    def __init__(self, directory: Path, metadata: dict[str, Any], threads: int = 1) -> None:
        self.directory = directory
        self.metadata = metadata
        self.version: str = metadata["model_version"]
        self.intents = tuple(IntentInfo(i["id"], i["label"], bool(i["sensitive"])) for i in metadata["intents"])
        self.intent_ids = tuple(intent.id for intent in self.intents)
        self.browsing_index = self.intent_ids.index(metadata["browsing_intent"])
        recorded = metadata.get("domain")  # absent in models exported before they recorded it
        self.domain = ModelDomain(recorded["name"], recorded["taxonomy_sha256"]) if recorded else None
        self.featurizer = Featurizer(Vocabulary.from_json(metadata["vocabulary"]))
        self.detector_config = DetectorConfig.from_json(metadata["detector"])
        self.hidden_size: int = int(metadata["architecture"]["hidden_size"])
        # "current_intent": a distribution over intents after each event (the simulated demo);
        # "next_basket": for each intent, and each category of `categories`, the probability that
        # the shopper's next basket holds it (learnt from a retailer's own purchase log).
        self.target: str = metadata.get("target", CURRENT_INTENT)
        self.categories: tuple[str, ...] = tuple(metadata.get("category_head", ()))
        options = ort.SessionOptions()
        # One intra-op thread by default: the worker's event loop needs the other core, and the
        # micro-batches are small enough that more threads cost more in hand-offs than they save.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        self._sequence = ort.InferenceSession(str(directory / SEQUENCE_FILE), options, providers=providers)
        self._step = ort.InferenceSession(str(directory / STEP_FILE), options, providers=providers)

    @classmethod
    def load(cls, directory: Path, threads: int = 1) -> IntentModel:
        directory = Path(directory)
        metadata_path = directory / METADATA_FILE
        if not metadata_path.is_file():
            raise ModelError(f"{directory}: no {METADATA_FILE}; is this a model directory?")
        metadata = orjson.loads(metadata_path.read_bytes())
        spec = metadata.get("feature_spec_version")
        if spec != FEATURE_SPEC_VERSION or metadata.get("feature_columns") != list(FEATURE_COLUMNS):
            raise ModelError(
                f"{directory}: the model was trained for feature spec {spec} "
                f"and this intent encodes spec {FEATURE_SPEC_VERSION}: retrain it with "
                "`python -m training all` or run the intent version it was built with"
            )
        for name in (SEQUENCE_FILE, STEP_FILE):
            path = directory / name
            if not path.is_file():
                raise ModelError(f"{directory}: {name} is missing")
            expected = metadata["files"][name]["sha256"]
            actual = sha256_of(path)
            if actual != expected:
                raise ModelError(
                    f"{path}: sha256 {actual[:12]}… does not match metadata {expected[:12]}…; "
                    "the file was changed after export: re-export the model"
                )
        model = cls(directory, metadata, threads)
        model.probe()
        return model

    def probe(self) -> None:
        """One inference on a blank event, checked: raises `ModelError` unless the step model answers
        probabilities over this model's intents (a distribution for a current-intent model, each in
        [0, 1] for a next-basket one, plus one per category of its category head) and a state of its
        recorded size.

        A model that loads is then known to serve, rather than failing on the first real event.
        """
        features = np.zeros((1, len(FEATURE_COLUMNS)), dtype=np.int64)
        try:
            probabilities, hidden, categories = self.step_outputs(features, self.initial_hidden())
        except Exception as error:  # onnxruntime's own errors, or outputs that are not a pair
            raise ModelError(f"{self.directory}: {STEP_FILE} does not answer a probe inference: {error}") from error
        if probabilities.shape != (1, len(self.intent_ids)) or hidden.shape != (1, self.hidden_size):
            raise ModelError(
                f"{self.directory}: {STEP_FILE} answered shapes {probabilities.shape} and {hidden.shape} "
                f"to a probe, not (1, {len(self.intent_ids)}) intents and (1, {self.hidden_size}) state"
            )
        if self.target == NEXT_BASKET:
            if categories is None or categories.shape != (1, len(self.categories)):
                raise ModelError(
                    f"{self.directory}: {STEP_FILE} answered no probability for each of its "
                    f"{len(self.categories)} categories"
                )
            outputs = np.concatenate([probabilities, categories], axis=1)
            if not np.isfinite(outputs).all() or outputs.min() < 0 or outputs.max() > 1:
                raise ModelError(
                    f"{self.directory}: {STEP_FILE} answered a probe with values that are no probabilities"
                )
        elif not np.isfinite(probabilities).all() or abs(float(probabilities.sum()) - 1.0) > 1e-3:
            raise ModelError(f"{self.directory}: {STEP_FILE} answered a probe with no probability distribution")

    def sequence_probabilities(self, features: np.ndarray) -> np.ndarray:
        """features (batch, time, columns) int64 -> probabilities (batch, time, intents)."""
        return self._sequence.run(None, {"features": features})[0]

    def sequence_outputs(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Intent probabilities and, for a next-basket model, category probabilities (batch, time, categories)."""
        outputs = self._sequence.run(None, {"features": features})
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    def step(self, features: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """features (batch, columns) int64, hidden (batch, hidden_size) float32 -> both updated."""
        probabilities, new_hidden, _ = self.step_outputs(features, hidden)
        return probabilities, new_hidden

    def step_outputs(
        self, features: np.ndarray, hidden: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """As `step`, plus a next-basket model's category probabilities (batch, categories)."""
        outputs = self._step.run(None, {"features": features, "hidden": hidden})
        return outputs[0], outputs[1], outputs[2] if len(outputs) > 2 else None

    def initial_hidden(self, batch: int = 1) -> np.ndarray:
        return np.zeros((batch, self.hidden_size), dtype=np.float32)

    def run_sequences(self, features: list[np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
        """Probabilities for each of several sequences of different lengths."""
        return [intents for intents, _ in self.run_sequence_outputs(features, batch_size)]

    def run_sequence_outputs(
        self, features: list[np.ndarray], batch_size: int = 64
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Intent and (next-basket models) category probabilities for each of several sequences."""
        outputs: list[tuple[np.ndarray, np.ndarray | None]] = [(np.empty(0), None)] * len(features)
        for positions, batch in padded_batches(features, batch_size):
            intents, categories = self.sequence_outputs(batch)
            for row, i in enumerate(positions):
                length = len(features[i])
                outputs[i] = (intents[row, :length], None if categories is None else categories[row, :length])
        return outputs
