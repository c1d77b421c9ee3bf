"""`python -m training compare`: the GRU and the causal Transformer, side by side on the same data."""

from __future__ import annotations

import orjson
import pytest
import torch

from intent.features import Featurizer
from intent.taxonomy import Taxonomy
from training.__main__ import main as training_main
from training.compare import TABLE_ROWS
from training.export import MAX_ONNX_BYTES, MAX_PARAMETERS
from training.network import IntentGRU
from training.transformer import IntentTransformer

MODELS = ("gru", "transformer")


def random_events(featurizer: Featurizer, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    columns = [
        torch.randint(0, cardinality, (1, length), generator=generator) for cardinality in featurizer.cardinalities
    ]
    return torch.stack(columns, dim=-1)


def build(name: str, featurizer: Featurizer, taxonomy: Taxonomy) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "gru":
        return IntentGRU(featurizer.cardinalities, len(taxonomy.ids), hidden_size=32).eval()
    return IntentTransformer(featurizer.cardinalities, len(taxonomy.ids), width=32, window=10).eval()


def test_compare_prints_both_models_side_by_side_then_a_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    training_main(
        ["compare", "--shoppers", "30", "--validation-shoppers", "8", "--test-shoppers", "8", "--epochs", "1"]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    summary = orjson.loads(lines[-1])
    table = {line.split()[0]: line.split()[1:] for line in lines[:-1] if line.split() and line.split()[0] in TABLE_ROWS}
    assert set(table) == set(TABLE_ROWS) and all(len(cells) == len(MODELS) for cells in table.values())
    assert summary["train_sequences"] == 30 and 0 < summary["bayes_accuracy"] <= 1
    for name in MODELS:
        figures = summary[name]
        assert set(TABLE_ROWS) <= set(figures)
        assert figures["parameters"] <= MAX_PARAMETERS and figures["onnx_bytes"] <= MAX_ONNX_BYTES
        assert 0 <= figures["test_accuracy"] <= 1
        assert figures["ratio_to_bayes"] == pytest.approx(
            figures["test_accuracy"] / summary["bayes_accuracy"], abs=1e-3
        )
        # the exported stream form (GRU step model, Transformer re-reading its window) reproduces
        # the full-sequence outputs the model was scored with
        assert figures["stream_vs_full_max_difference"] <= 1e-4
        assert figures["stream_us_per_event_batch1"] > 0 and figures["stream_us_per_event_batch64"] > 0
    assert summary["gru"]["state_bytes_per_session"] == 128 * 4
    assert summary["transformer"]["state_bytes_per_session"] == 50 * 8 * 8
    assert summary["transformer"]["kv_cache_bytes_per_session"] == 2 * 2 * 24 * 64 * 4


@pytest.mark.parametrize("name", MODELS)
def test_changing_a_future_event_leaves_every_earlier_output_unchanged(
    name: str, featurizer: Featurizer, taxonomy: Taxonomy
) -> None:
    model = build(name, featurizer, taxonomy)
    events = random_events(featurizer, 30, seed=1)
    changed = events.clone()
    changed[0, 20:] = random_events(featurizer, 10, seed=2)
    with torch.no_grad():
        before, _ = model(events)
        after, _ = model(changed)
    assert before.shape == (1, 30, len(taxonomy.ids))
    assert torch.allclose(before[0, :20], after[0, :20], atol=1e-6)
    assert not torch.allclose(before[0, 20], after[0, 20], atol=1e-6)


def test_the_transformer_output_after_an_event_depends_only_on_its_window(
    featurizer: Featurizer, taxonomy: Taxonomy
) -> None:
    model = build("transformer", featurizer, taxonomy)
    events = random_events(featurizer, 40, seed=3)
    changed = events.clone()
    changed[0, :30] = random_events(featurizer, 30, seed=4)  # everything before the last 10 events
    with torch.no_grad():
        full, _ = model(events)
        window_only, _ = model(events[:, -10:])
        with_other_past, _ = model(changed)
    assert torch.allclose(full[0, -1], window_only[0, -1], atol=1e-5)
    assert torch.allclose(full[0, -1], with_other_past[0, -1], atol=1e-5)
    assert not torch.allclose(full[0, -11], with_other_past[0, -11], atol=1e-5)
