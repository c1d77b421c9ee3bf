"""Export the trained GRU to ONNX (full-sequence and single-step models) with metadata.

Export fails unless onnxruntime reproduces torch (max abs difference <= PARITY_TOLERANCE) on
held-out sequences, and unless stepping the step model through a sequence reproduces the
full-sequence outputs: the stream runs the step model, evaluation runs the full one.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from intent.detector import DetectorConfig
from intent.domain import model_domain_record
from intent.features import FEATURE_COLUMNS, FEATURE_SPEC_VERSION, Vocabulary
from intent.model import CURRENT_INTENT, METADATA_FILE, NEXT_BASKET, SEQUENCE_FILE, STEP_FILE, IntentModel, sha256_of
from intent.taxonomy import Taxonomy
from training.network import (
    IntentGRU,
    NextBasketGRU,
    NextBasketSequence,
    NextBasketStep,
    SequenceProbabilities,
    StepProbabilities,
    parameter_count,
)
from training.train import next_basket_outputs, predict

OPSET = 17
PARITY_TOLERANCE = 1e-4
MAX_PARAMETERS = 1_000_000
MAX_ONNX_BYTES = 4 * 1024 * 1024


class ExportError(RuntimeError):
    pass


def export_model(
    model: IntentGRU,
    out_dir: Path,
    *,
    name: str,
    domain_name: str,
    taxonomy: Taxonomy,
    vocabulary: Vocabulary,
    detector: DetectorConfig,
    training_summary: dict[str, Any],
    parity_sequences: Sequence[np.ndarray],
    category_head: Sequence[str] = (),
    serving: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the ONNX files and metadata; `category_head` names the categories of a NextBasketGRU's
    second head, in order; `serving` adds what the runtime needs beside the model (a next-basket
    model's ranking weights and category popularity)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    parameters = parameter_count(model)
    if parameters > MAX_PARAMETERS:
        raise ExportError(f"{parameters:,} parameters; the budget is {MAX_PARAMETERS:,}")
    example = torch.from_numpy(parity_sequences[0][None, :4])
    next_basket = isinstance(model, NextBasketGRU)
    sequence_outputs = {"probabilities": {0: "batch", 1: "time"}}
    step_outputs = {"probabilities": {0: "batch"}, "next_hidden": {0: "batch"}}
    if next_basket:
        sequence_outputs["category_probabilities"] = {0: "batch", 1: "time"}
        step_outputs["category_probabilities"] = {0: "batch"}
    onnx_export(
        NextBasketSequence(model) if next_basket else SequenceProbabilities(model),
        (example,),
        out_dir / SEQUENCE_FILE,
        inputs={"features": {0: "batch", 1: "time"}},
        outputs=sequence_outputs,
    )
    onnx_export(
        NextBasketStep(model) if next_basket else StepProbabilities(model),
        (example[:, 0], torch.zeros(1, model.hidden_size)),
        out_dir / STEP_FILE,
        inputs={"features": {0: "batch"}, "hidden": {0: "batch"}},
        outputs=step_outputs,
    )
    files = {}
    for file_name in (SEQUENCE_FILE, STEP_FILE):
        size = (out_dir / file_name).stat().st_size
        if size > MAX_ONNX_BYTES:
            raise ExportError(f"{file_name} is {size:,} bytes; the budget is {MAX_ONNX_BYTES:,}")
        files[file_name] = {"sha256": sha256_of(out_dir / file_name), "bytes": size}

    metadata: dict[str, Any] = {
        "name": name,
        "model_version": f"{name}-{files[SEQUENCE_FILE]['sha256'][:12]}",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "architecture": {"type": "gru", "hidden_size": model.hidden_size, "parameters": parameters},
        "intents": [{"id": i.id, "label": i.label, "sensitive": i.sensitive} for i in taxonomy.intents],
        "browsing_intent": taxonomy.browsing_intent,
        "domain": model_domain_record(domain_name, taxonomy),
        "target": NEXT_BASKET if next_basket else CURRENT_INTENT,
        **({"category_head": list(category_head)} if next_basket else {}),
        "feature_spec_version": FEATURE_SPEC_VERSION,
        "feature_columns": list(FEATURE_COLUMNS),
        "vocabulary": vocabulary.to_json(),
        "opset": OPSET,
        "files": files,
        "detector": detector.to_json(),
        "training": training_summary,
        **(serving or {}),
    }
    (out_dir / METADATA_FILE).write_bytes(orjson.dumps(metadata, option=orjson.OPT_INDENT_2))
    metadata["parity"] = check_parity(model, IntentModel.load(out_dir), parity_sequences)
    (out_dir / METADATA_FILE).write_bytes(orjson.dumps(metadata, option=orjson.OPT_INDENT_2))
    return metadata


def onnx_export(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    inputs: dict[str, dict[int, str]],
    outputs: dict[str, dict[int, str]],
) -> None:
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated and that a batch-first GRU is
        # exported with a transpose; both are expected (the dynamo exporter needs onnxscript).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes={**inputs, **outputs},
            opset_version=OPSET,
            dynamo=False,
        )


def check_parity(model: IntentGRU, exported: IntentModel, sequences: Sequence[np.ndarray]) -> dict[str, float]:
    """Max abs differences: onnxruntime full vs torch, and step-by-step vs full. Raises above
    PARITY_TOLERANCE."""
    if isinstance(model, NextBasketGRU):
        intents, categories = next_basket_outputs(model, sequences)
        expected = [np.concatenate(pair, axis=1) for pair in zip(intents, categories, strict=True)]
    else:
        expected = predict(model, sequences)
    full = [
        np.concatenate([o for o in outputs if o is not None], axis=1)
        for outputs in exported.run_sequence_outputs(list(sequences))
    ]
    full_difference = max(float(np.abs(a - b).max()) for a, b in zip(expected, full, strict=True))
    step_difference = 0.0
    for sequence, reference in zip(sequences[:16], full, strict=False):
        hidden = exported.initial_hidden()
        for position, row in enumerate(sequence[:400]):
            probabilities, hidden, categories = exported.step_outputs(row[None, :], hidden)
            stepped = probabilities[0] if categories is None else np.concatenate([probabilities[0], categories[0]])
            step_difference = max(step_difference, float(np.abs(stepped - reference[position]).max()))
    if full_difference > PARITY_TOLERANCE:
        raise ExportError(f"onnxruntime differs from torch by {full_difference:.2e} > {PARITY_TOLERANCE}")
    if step_difference > PARITY_TOLERANCE:
        raise ExportError(f"the step model differs from the full model by {step_difference:.2e} > {PARITY_TOLERANCE}")
    return {"torch_vs_onnx": full_difference, "step_vs_full": step_difference}
