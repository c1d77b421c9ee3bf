"""A training smoke run on tiny data, export parity and the metadata contract."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest

from intent.domain import DomainError, check_model_domain, load_domain, model_domain_record
from intent.features import FEATURE_COLUMNS, FEATURE_SPEC_VERSION, Featurizer
from intent.model import METADATA_FILE, STEP_FILE, IntentModel, ModelError
from intent.simulate import Simulator
from intent.taxonomy import DEMO_DOMAIN_DIR, DOMAINS_DIR, Taxonomy, load_taxonomy
from training.__main__ import main as training_main
from training.data import encode, from_records, from_simulation, read_labelled_file
from training.simulate import iter_jsonl_records
from training.train import TrainConfig

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny"
    training_main(
        [
            "all",
            "--out",
            str(out),
            "--shoppers",
            "60",
            "--validation-shoppers",
            "12",
            "--test-shoppers",
            "12",
            "--epochs",
            "2",
            "--hidden-size",
            "16",
            "--seed",
            "3",
        ]
    )
    return out


def test_one_command_writes_a_complete_model_directory(tiny_model: Path) -> None:
    names = {p.name for p in tiny_model.iterdir()}
    assert {
        "model.onnx",
        "step.onnx",
        "metadata.json",
        "metrics.json",
        "MODEL_CARD.md",
        "confusion_matrix.png",
        "detection_delay.png",
        "calibration.png",
    } <= names


def test_metadata_holds_what_serving_and_auditing_need(tiny_model: Path) -> None:
    metadata = orjson.loads((tiny_model / METADATA_FILE).read_bytes())
    assert metadata["feature_spec_version"] == FEATURE_SPEC_VERSION
    assert metadata["feature_columns"] == list(FEATURE_COLUMNS)
    assert metadata["model_version"].startswith("tiny-")
    assert set(metadata) >= {
        "created_at",
        "intents",
        "vocabulary",
        "opset",
        "files",
        "detector",
        "training",
        "evaluation",
        "parity",
        "architecture",
    }
    assert metadata["architecture"]["parameters"] <= 1_000_000
    for file in metadata["files"].values():
        assert len(file["sha256"]) == 64 and 0 < file["bytes"] <= 4 * 1024 * 1024
    assert metadata["parity"]["torch_vs_onnx"] <= 1e-4
    assert metadata["parity"]["step_vs_full"] <= 1e-4
    assert metadata["training"]["distillation_weight"] == TrainConfig.distillation_weight


def test_the_model_records_the_domain_it_was_trained_on_and_is_served_only_with_it(tiny_model: Path) -> None:
    metadata = orjson.loads((tiny_model / METADATA_FILE).read_bytes())
    assert metadata["domain"] == model_domain_record("demo", load_taxonomy())
    assert [intent["id"] for intent in metadata["intents"]] == metadata["domain"]["intents"]
    model = IntentModel.load(tiny_model)
    check_model_domain(model, load_domain(DEMO_DOMAIN_DIR))
    with pytest.raises(DomainError, match=r"trained on domain 'demo' .*INTENT_DOMAIN_DIR"):
        check_model_domain(model, load_domain(DOMAINS_DIR / "completejourney"))


def test_metrics_have_every_required_figure_for_model_and_baselines(tiny_model: Path) -> None:
    metrics = orjson.loads((tiny_model / "metrics.json").read_bytes())
    figures = {
        "accuracy",
        "macro_f1",
        "shift_precision",
        "shift_recall",
        "shift_f1",
        "median_delay_events",
        "p90_delay_events",
        "false_alarms_per_1k_events",
    }
    assert figures | {"bayes_optimal_accuracy", "ratio_to_bayes"} <= set(metrics)
    assert set(metrics["baselines"]) == {"top_sellers", "last_category", "static_segment", "windowed_category_counts"}
    for baseline in metrics["baselines"].values():
        assert figures <= set(baseline)
    assert 0 < metrics["bayes_optimal_accuracy"] <= 1
    assert metrics["ratio_to_bayes"] == pytest.approx(metrics["accuracy"] / metrics["bayes_optimal_accuracy"])
    assert {"cold_flu_detected_after_tea_events", "bayes_optimal_cold_flu_detected_after_tea_events"} <= set(
        metrics["story"]
    )


def test_the_step_model_reproduces_the_full_model_event_by_event(tiny_model: Path) -> None:
    model = IntentModel.load(tiny_model)
    shopper = Simulator(seed=99).shoppers(3)[2]
    (sequence,) = from_simulation([shopper], load_taxonomy())
    (features,) = encode(model.featurizer, [sequence])
    full = model.sequence_probabilities(features[None])[0]
    hidden = model.initial_hidden()
    for position, row in enumerate(features):
        step, hidden = model.step(row[None], hidden)
        assert np.abs(step[0] - full[position]).max() <= 1e-4


def test_a_tampered_model_file_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    with (copy / STEP_FILE).open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match="does not match metadata"):
        IntentModel.load(copy)


def test_a_model_for_another_feature_spec_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    metadata = orjson.loads((copy / METADATA_FILE).read_bytes())
    metadata["feature_spec_version"] = FEATURE_SPEC_VERSION + 1
    (copy / METADATA_FILE).write_bytes(orjson.dumps(metadata))
    with pytest.raises(ModelError, match="retrain"):
        IntentModel.load(copy)


def test_labelled_files_train_with_weak_labels_where_labels_are_missing(
    tmp_path: Path, taxonomy: Taxonomy, featurizer: Featurizer
) -> None:
    records = list(iter_jsonl_records(Simulator(seed=12).shoppers(40)))
    for record in records[::2]:
        del record["intent"]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    sequences, counts = from_records(read_labelled_file(path), taxonomy, featurizer)
    assert counts["events"] == len(records)
    assert counts["labelled"] == counts["weakly_labelled"] == len(records) // 2
    coffee = next(r for r in records if r.get("properties", {}).get("category") == "coffee beans" and "intent" not in r)
    sequence = next(s for s in sequences if s.key == (coffee.get("userId") or coffee.get("anonymousId")))
    position = next(i for i, e in enumerate(sequence.events) if e.message_id == coffee["messageId"])
    assert taxonomy.ids[sequence.labels[position]] == "coffee_ritual"

    out = tmp_path / "own"
    training_main(["all", "--out", str(out), "--data", str(path), "--epochs", "1", "--hidden-size", "8"])
    training = IntentModel.load(out).metadata["training"]
    assert training["source"].startswith(str(path))
    assert training["distillation_weight"] is None, "own data has no Bayes filter: labels only"


def test_parquet_files_use_the_flat_columns(tmp_path: Path, taxonomy: Taxonomy, featurizer: Featurizer) -> None:
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pyarrow.table(
        {
            "event": ["Product Viewed", "Product Viewed"],
            "userId": ["u1", "u1"],
            "messageId": ["a", "b"],
            "timestamp": ["2026-01-05T08:00:00Z", "2026-01-05T08:01:00Z"],
            "category": ["mint tea", "coffee beans"],
            "price": [3.2, 11.0],
            "intent": ["cold_flu_care", None],
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    (sequence,), counts = from_records(read_labelled_file(tmp_path / "events.parquet"), taxonomy, featurizer)
    assert [taxonomy.ids[i] for i in sequence.labels] == ["cold_flu_care", "coffee_ritual"]
    assert sequence.events[0].price == 3.2 and counts["weakly_labelled"] == 1
