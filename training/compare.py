"""GRU or small causal Transformer? `python -m training compare` trains both on the same data.

Both read the same per-event embeddings and emit an intent distribution after every event from
past events only. Scored like `python -m training all` scores the shipped model: test accuracy, its
ratio to the Bayes-optimal filter, and shift F1 / false alarms with a detector tuned on validation
data. Then the cost that matters in production, where a session's events arrive one at a time: the
GRU's step model reads one event and its state; the Transformer re-reads its whole window. Both are
exported to ONNX and timed with onnxruntime on one thread, as a stream worker runs them.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import torch
from torch import nn

from intent.detector import ShiftDetector
from intent.features import Featurizer
from intent.simulate import World
from intent.taxonomy import Taxonomy
from training.data import LabelledSequence, encode
from training.evaluate import bayes_distributions, score, tune_detector
from training.export import onnx_export
from training.network import IntentGRU, StepProbabilities, parameter_count
from training.train import TrainConfig, accuracy, predict, train
from training.transformer import IntentTransformer, LastEventProbabilities

BATCH_SIZES = (1, 64)
TIMING_SECONDS = 0.5  # per measurement: long enough to average out scheduler noise on shared cores
FLOAT32_BYTES = 4
INT64_BYTES = 8


def compare(
    featurizer: Featurizer,
    taxonomy: Taxonomy,
    train_set: Sequence[LabelledSequence],
    validation_set: Sequence[LabelledSequence],
    test_set: Sequence[LabelledSequence],
    world: World,
    config: TrainConfig,
) -> dict[str, Any]:
    """Train both models on the same splits, print the side-by-side table and a JSON line, and
    return the figures."""
    intents = len(taxonomy.ids)
    browsing = taxonomy.index(taxonomy.browsing_intent)
    train_x, validation_x, test_x = (encode(featurizer, s) for s in (train_set, validation_set, test_set))
    test_labels = [s.labels for s in test_set]
    bayes_accuracy = accuracy(bayes_distributions(world, featurizer, test_set), test_labels)

    def gru() -> nn.Module:
        return IntentGRU(featurizer.cardinalities, intents, config.hidden_size)

    def transformer() -> nn.Module:
        return IntentTransformer(featurizer.cardinalities, intents)

    figures: dict[str, dict[str, Any]] = {}
    for name, build in (("gru", gru), ("transformer", transformer)):
        print(f"training the {name} ...")
        torch.manual_seed(config.seed)  # the same initial draw `train` gives the GRU in `all`
        result = train(
            featurizer.cardinalities,
            intents,
            train_x,
            [s.labels for s in train_set],
            validation_x,
            [s.labels for s in validation_set],
            config,
            progress=False,
            model=build(),
        )
        detector_config, _ = tune_detector(predict(result.model, validation_x), validation_set, browsing)
        test_distributions = predict(result.model, test_x)
        scores, _ = score(test_distributions, test_set, ShiftDetector(detector_config, browsing))
        figures[name] = {
            "parameters": parameter_count(result.model),
            "train_seconds": round(result.seconds, 1),
            "best_epoch": result.best_epoch,
            "test_accuracy": round(scores["accuracy"], 4),
            "ratio_to_bayes": round(scores["accuracy"] / bayes_accuracy, 4),
            "shift_f1": round(scores["shift_f1"], 4),
            "false_alarms_per_1k_events": round(scores["false_alarms_per_1k_events"], 3),
            **stream_figures(result.model, test_x, test_distributions),
        }
    summary = {
        "train_sequences": len(train_set),
        "test_events": int(sum(len(labels) for labels in test_labels)),
        "epochs": config.epochs,
        "threads": config.threads,
        "bayes_accuracy": round(bayes_accuracy, 4),
        **figures,
    }
    print_table(summary)
    print(orjson.dumps(summary).decode())
    return summary


def stream_figures(
    model: nn.Module, sequences: Sequence[np.ndarray], full_outputs: Sequence[np.ndarray]
) -> dict[str, Any]:
    """Export the model as the stream would run it, check it against the full-sequence outputs on
    the longest test sequence, and time it per event at each batch size."""
    model.eval()
    longest = max(range(len(sequences)), key=lambda i: len(sequences[i]))
    rows = np.concatenate(list(sequences))
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "stream.onnx"
        if isinstance(model, IntentGRU):
            example = (torch.from_numpy(rows[:1]), torch.zeros(1, model.hidden_size))
            axes = {"features": {0: "batch"}, "hidden": {0: "batch"}}
            session = _export_and_load(StepProbabilities(model), example, axes, path)
            difference = _gru_stream_difference(session, sequences[longest], full_outputs[longest], model.hidden_size)
            state_bytes = model.hidden_size * FLOAT32_BYTES
            extra: dict[str, int] = {}
            inputs = {
                batch: {
                    "features": np.resize(rows, (batch, rows.shape[1])),
                    "hidden": np.zeros((batch, model.hidden_size), dtype=np.float32),
                }
                for batch in BATCH_SIZES
            }
        elif isinstance(model, IntentTransformer):
            window = np.resize(rows, (1, model.window, rows.shape[1]))
            # time is dynamic too: a session's first events make a shorter window
            axes = {"window": {0: "batch", 1: "time"}}
            session = _export_and_load(LastEventProbabilities(model), (torch.from_numpy(window),), axes, path)
            difference = _window_stream_difference(session, sequences[longest], full_outputs[longest], model.window)
            # the stream keeps each session's last `window` feature rows and re-reads them
            state_bytes = model.window * rows.shape[1] * INT64_BYTES
            # the alternative to re-reading: cache each layer's keys and values for the span - 1
            # events before the new one (cheaper per event, but floats rather than feature rows)
            extra = {
                "kv_cache_bytes_per_session": len(model.blocks) * 2 * (model.span - 1) * model.width * FLOAT32_BYTES
            }
            inputs = {batch: {"window": np.resize(rows, (batch, model.window, rows.shape[1]))} for batch in BATCH_SIZES}
        else:
            raise TypeError(f"no stream form for {type(model).__name__}")
        return {
            "onnx_bytes": path.stat().st_size,
            "stream_vs_full_max_difference": float(f"{difference:.1e}"),
            "state_bytes_per_session": state_bytes,
            **{
                f"stream_us_per_event_batch{batch}": round(_microseconds_per_event(session, inputs[batch], batch), 1)
                for batch in BATCH_SIZES
            },
            **extra,
        }


def _export_and_load(
    module: nn.Module, example: tuple[torch.Tensor, ...], input_axes: dict[str, dict[int, str]], path: Path
) -> ort.InferenceSession:
    onnx_export(module, example, path, input_axes, {"probabilities": {0: "batch"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _gru_stream_difference(
    session: ort.InferenceSession, sequence: np.ndarray, full: np.ndarray, hidden_size: int
) -> float:
    hidden = np.zeros((1, hidden_size), dtype=np.float32)
    difference = 0.0
    for position, row in enumerate(sequence):
        probabilities, hidden = session.run(None, {"features": row[None, :], "hidden": hidden})
        difference = max(difference, float(np.abs(probabilities[0] - full[position]).max()))
    return difference


def _window_stream_difference(
    session: ort.InferenceSession, sequence: np.ndarray, full: np.ndarray, window: int
) -> float:
    difference = 0.0
    for position in range(len(sequence)):
        recent = sequence[max(0, position + 1 - window) : position + 1][None]
        (probabilities,) = session.run(None, {"window": recent})
        difference = max(difference, float(np.abs(probabilities[0] - full[position]).max()))
    return difference


def _microseconds_per_event(session: ort.InferenceSession, inputs: dict[str, np.ndarray], batch: int) -> float:
    """One stream step for `batch` sessions at once, divided by the sessions it serves."""
    for _ in range(5):
        session.run(None, inputs)
    runs = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < TIMING_SECONDS or runs < 10:
        session.run(None, inputs)
        runs += 1
    return elapsed / runs / batch * 1e6


TABLE_ROWS = (
    "parameters",
    "onnx_bytes",
    "train_seconds",
    "best_epoch",
    "test_accuracy",
    "ratio_to_bayes",
    "shift_f1",
    "false_alarms_per_1k_events",
    "stream_us_per_event_batch1",
    "stream_us_per_event_batch64",
    "state_bytes_per_session",
    "stream_vs_full_max_difference",
)


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"\n{summary['train_sequences']:,} training shoppers, {summary['epochs']} epochs, "
        f"{summary['threads']} threads; {summary['test_events']:,} test events, "
        f"Bayes-optimal accuracy {summary['bayes_accuracy']}"
    )
    print(f"{'':<32}{'gru':>14}{'transformer':>14}")
    for row in TABLE_ROWS:
        print(f"{row:<32}" + "".join(f"{summary[name][row]:>14,}" for name in ("gru", "transformer")))
    print(
        f"(a Transformer stepping with a key/value cache instead of re-reading its window would keep "
        f"{summary['transformer']['kv_cache_bytes_per_session']:,} bytes per session)"
    )
