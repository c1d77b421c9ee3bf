"""The model card: figures and plots a reviewer needs before shipping a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np

from training.evaluate import Evaluation

TARGETS = {
    "ratio_to_bayes": (">=", 0.95),
    "shift_f1": (">=", 0.85),
    "false_alarms_per_1k_events": ("<=", 2.0),
}
# The figures every table shows, for the model, the Bayes reference and each baseline.
TABLE_COLUMNS = (
    "accuracy",
    "macro_f1",
    "shift_precision",
    "shift_recall",
    "shift_f1",
    "median_delay_events",
    "p90_delay_events",
    "false_alarms_per_1k_events",
)


def comparison_rows(metrics: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    return [
        ("model", metrics),
        ("bayes_optimal (reference)", metrics["bayes_optimal"]),
        *metrics["baselines"].items(),
    ]


def comparison_table(metrics: dict[str, Any]) -> str:
    header = "| | " + " | ".join(TABLE_COLUMNS) + " |"
    lines = [header, "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    for name, figures in comparison_rows(metrics):
        lines.append(f"| {name} | " + " | ".join(f"{figures[c]:.3f}" for c in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def target_lines(metrics: dict[str, Any]) -> list[str]:
    lines = []
    for key, (direction, bound) in TARGETS.items():
        value = metrics[key]
        met = value >= bound if direction == ">=" else value <= bound
        lines.append(f"- `{key}` = {value:.3f} (target {direction} {bound}): {'met' if met else 'NOT met'}")
    story = metrics["story"]
    tea = story["cold_flu_detected_after_tea_events"]
    met = tea is not None and tea <= 3
    lines.append(
        f"- cold & flu shift in the coffee -> tea -> cold story after {tea} tea-related events "
        f"(target <= 3; Bayes-optimal filter: {story['bayes_optimal_cold_flu_detected_after_tea_events']}): "
        f"{'met' if met else 'NOT met'}"
    )
    return lines


def write_plots(evaluation: Evaluation, intents: list[str], out_dir: Path) -> dict[str, str]:
    predicted = np.concatenate([d.argmax(axis=1) for d in evaluation.model_distributions])
    confidence = np.concatenate([d.max(axis=1) for d in evaluation.model_distributions])
    labels = evaluation.labels
    files = {}

    confusion = np.zeros((len(intents), len(intents)))
    np.add.at(confusion, (labels, predicted), 1)
    confusion = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(9, 8))
    image = axis.imshow(confusion, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(intents)), intents, rotation=75, fontsize=8)
    axis.set_yticks(range(len(intents)), intents, fontsize=8)
    axis.set_xlabel("predicted intent")
    axis.set_ylabel("true intent")
    axis.set_title("Confusion matrix (row-normalised), held-out shoppers")
    figure.colorbar(image)
    figure.tight_layout()
    files["confusion_matrix"] = _save(figure, out_dir / "confusion_matrix.png")

    figure, axis = plt.subplots(figsize=(6, 4))
    delays = evaluation.model_shift_delays
    axis.hist(delays, bins=np.arange(-0.5, max(delays, default=0) + 1.5), rwidth=0.8)
    axis.set_xlabel("detection delay (events after the true switch)")
    axis.set_ylabel("detected shifts")
    axis.set_title("Detection delay of matched shifts")
    figure.tight_layout()
    files["detection_delay"] = _save(figure, out_dir / "detection_delay.png")

    edges = np.linspace(0, 1, 11)
    bins = np.clip(np.digitize(confidence, edges) - 1, 0, 9)
    centres, accuracies, counts = [], [], []
    for b in range(10):
        chosen = bins == b
        if chosen.any():
            centres.append(confidence[chosen].mean())
            accuracies.append((predicted[chosen] == labels[chosen]).mean())
            counts.append(chosen.sum())
    ece = float(np.sum(np.abs(np.array(accuracies) - np.array(centres)) * np.array(counts)) / len(labels))
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    axis.plot(centres, accuracies, "o-", label=f"model (ECE {ece:.3f})")
    axis.set_xlabel("confidence of the top intent")
    axis.set_ylabel("accuracy")
    axis.set_title("Reliability")
    axis.legend()
    figure.tight_layout()
    files["calibration"] = _save(figure, out_dir / "calibration.png")
    evaluation.metrics["expected_calibration_error"] = ece
    return files


def _save(figure: Any, path: Path) -> str:
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path.name


def _training_targets(distillation_weight: float | None) -> str:
    if distillation_weight is None:
        return "the labelled intent after every event"
    if distillation_weight == 1:
        return (
            "after every event, the Bayes-optimal filter's posterior on the events so far (knowledge "
            "distillation: how sure anyone could be, not only which intent it was); the labels choose the epoch"
        )
    return (
        f"after every event, {distillation_weight:g} x the Bayes-optimal filter's posterior on the events so far "
        f"+ {1 - distillation_weight:g} x the labelled intent (knowledge distillation)"
    )


def write_model_card(metadata: dict[str, Any], metrics: dict[str, Any], plots: dict[str, str], out_dir: Path) -> None:
    training = metadata["training"]
    story = metrics["story"]
    lines = [
        f"# Model card: {metadata['model_version']}",
        "",
        f"Created {metadata['created_at']}. A {metadata['architecture']['type'].upper()} with "
        f"hidden size {metadata['architecture']['hidden_size']} and "
        f"{metadata['architecture']['parameters']:,} parameters "
        f"(`model.onnx` {metadata['files']['model.onnx']['bytes']:,} bytes, "
        f"`step.onnx` {metadata['files']['step.onnx']['bytes']:,} bytes, opset {metadata['opset']}). "
        f"It outputs a distribution over {len(metadata['intents'])} intents after every event, "
        "using only the events before it.",
        "",
        "## Training",
        "",
        f"- data: {training['source']}; {training['sequences']:,} sequences, {training['events']:,} events",
        f"- seed {training['seed']}, {training['epochs']} epochs (best {training['best_epoch']}), "
        f"{training['seconds']:.0f} s on {training['threads']} CPU threads",
        f"- targets: {_training_targets(training.get('distillation_weight'))}",
        f"- detector tuned on validation shoppers: commits to an intent at once above "
        f"{metadata['detector']['instant_threshold']}, or after "
        f"{metadata['detector']['confirm_events']} consecutive event(s) above "
        f"{metadata['detector']['enter_threshold']}",
        f"- export parity: torch vs onnxruntime {metadata['parity']['torch_vs_onnx']:.1e}, "
        f"step vs full {metadata['parity']['step_vs_full']:.1e}",
        "",
        "## Evaluation",
        "",
        f"Held-out simulated shoppers (seed {training['test_seed']}, "
        f"{metrics['evaluation']['events']:,} events). The reference is the Bayes-optimal filter of "
        "the simulator's own generative process: the best any model can do on this data. A shift "
        f"counts when the detector names the new intent within {metrics['evaluation']['shift_margin_events']} "
        "events after the true switch. Reproduce with "
        f"`python -m training evaluate --model models/{metadata['name']}`.",
        "",
        comparison_table(metrics),
        "",
        f"Bayes-optimal accuracy {metrics['bayes_optimal_accuracy']:.3f}; the model reaches "
        f"{metrics['ratio_to_bayes']:.3f} of it. p90 detection delay {metrics['p90_delay_events']:.0f} events; "
        f"expected calibration error {metrics['expected_calibration_error']:.3f}.",
        "",
        "### Targets",
        "",
        *target_lines(metrics),
        "",
        "### The coffee -> tea -> cold story",
        "",
        "A weekly coffee buyer who, over three days, turns to herbal and mint tea, then to cold remedies:",
        "",
        *[
            f"- event {s['event']} ({s['event_name']}): {s['from'] or 'no intent'} -> {s['to']} "
            f"(confidence {s['confidence']:.2f})"
            for s in story["shifts"]
        ],
        "",
        f"The cold & flu shift fires after {story['cold_flu_detected_after_tea_events']} tea-related events "
        f"(the Bayes-optimal filter under the same detector: "
        f"{story['bayes_optimal_cold_flu_detected_after_tea_events']}).",
        "",
        "## Plots",
        "",
        f"![confusion matrix]({plots['confusion_matrix']})",
        f"![detection delay]({plots['detection_delay']})",
        f"![calibration]({plots['calibration']})",
        "",
        "## Limits",
        "",
        "- Trained and scored on simulated shoppers: the figures say how close the model gets to the "
        "best possible on data whose process is known, not how a real shop's shoppers behave.",
        "- Intent shows only through product categories; a catalogue whose categories do not "
        "separate intents caps every model, this one included (see the Bayes reference).",
        "- Shifts into intents that last one or two events are mostly missed: no filter can tell "
        "them from noise in time.",
        f"- False alarms: {metrics['false_alarms_per_1k_events']:.2f} per 1,000 events, "
        f"{metrics['false_alarms_right_intent_share']:.0%} of them naming the intent the shopper "
        "truly has at that event (a detection later than the 3-event margin, or a repeat after a "
        "brief detour), the rest a wrong intent."
        + (
            " The Bayes-optimal filter under the same detector makes "
            f"{metrics['bayes_optimal']['false_alarms_per_1k_events']:.2f}: the data itself sets a "
            "floor near there."
            if "bayes_optimal" in metrics
            else ""
        ),
        "",
    ]
    (out_dir / "MODEL_CARD.md").write_text("\n".join(lines), encoding="utf-8")
