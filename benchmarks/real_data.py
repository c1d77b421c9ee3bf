"""The detector on real shopping logs: what it does with shoppers it was not trained on.

    python benchmarks/real_data.py [--data ../shared/data] [--simulated-shoppers 300]

Maps the DIGINETICA, REES46 and Instacart samples with `intent.datasets` (in the order `intent
replay --format ...` would send them) and runs the stream's own per-event work over them offline:
the real `IntentTracker` (windows, ONNX step model, shift detector) with in-memory stores and the
shipped model, in micro-batches of 500 as the worker takes them. Our simulated shoppers run first as
the baseline. Per dataset it prints:
- events, sessions (session windows: shopper + sessionId), detector events/s (mapping excluded);
- intent changes per 1,000 events, and the share of sessions with at least one change;
- short sessions: the share of sessions with fewer than 3 events, too short to judge (the detector
  needs a few events of evidence before it moves off browsing);
- in vocabulary: the share of product events whose category the model knows. Events of unknown
  categories move the model's state but are no evidence to the detector (see intent/tracking.py);
- the detected intents: how often each intent was the target of a change, and "trigger fits":
  the share of changes whose triggering event's category is one of the new intent's categories in
  intent/domains/demo/intents.json (a plausibility check where our taxonomy applies, not an accuracy).
Ends with one JSON line of these figures. A dataset whose folder is absent is skipped with a note.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from intent.datasets import diginetica_events, instacart_events, rees46_events
from intent.events import ShopperEvent, event_from_dict
from intent.model import IntentModel
from intent.settings import get_settings
from intent.simulate import Simulator
from intent.stores import DictStore
from intent.taxonomy import load_taxonomy
from intent.tracking import IntentTracker
from intent.window import WindowPolicy, session_key

TOO_SHORT = 3  # events: a session with fewer is too short to judge
BATCH = 500  # the worker's default micro-batch (INTENT_BATCH_MAX_EVENTS)
PRODUCT_EVENTS = frozenset({"Product Viewed", "Product Added", "Product Removed"})
DATASETS: tuple[tuple[str, Callable[[Path], Iterator[dict[str, Any]]]], ...] = (
    ("diginetica", diginetica_events),
    ("rees46", rees46_events),
    ("instacart", instacart_events),
)


def run(name: str, events: list[ShopperEvent], model: IntentModel) -> dict[str, Any]:
    sessions = Counter(session_key(e) for e in events)
    vocabulary = set(model.featurizer.vocabulary.categories)
    product_events = [e for e in events if e.event_type in PRODUCT_EVENTS]
    tracker = IntentTracker(model, WindowPolicy(), DictStore(), DictStore())
    changes: list[dict[str, Any]] = []
    sessions_with_change: set[str] = set()
    started = time.perf_counter()
    for start in range(0, len(events), BATCH):
        chunk = events[start : start + BATCH]
        batch_changes = tracker.process(chunk, [(0, start + i) for i in range(len(chunk))])
        tracker.save()
        changes += batch_changes
    seconds = time.perf_counter() - started
    by_message = {e.message_id: e for e in events}
    intent_categories = {intent.id: set(intent.categories) for intent in load_taxonomy().intents}
    fitting = 0
    for change in changes:
        trigger = by_message[change["trigger_message_id"]]
        sessions_with_change.add(session_key(trigger))
        fitting += trigger.category in intent_categories[change["to_intent"]["id"]]
    return {
        "dataset": name,
        "events": len(events),
        "sessions": len(sessions),
        "events_per_s": round(len(events) / seconds),
        "changes_per_1k_events": round(1000 * len(changes) / max(1, len(events)), 2),
        "sessions_with_change_share": round(len(sessions_with_change) / max(1, len(sessions)), 3),
        "short_session_share": round(sum(1 for n in sessions.values() if n < TOO_SHORT) / max(1, len(sessions)), 3),
        "in_vocabulary_share": round(
            sum(1 for e in product_events if e.category in vocabulary) / max(1, len(product_events)), 3
        ),
        "trigger_fits_share": round(fitting / len(changes), 3) if changes else None,
        "detected_intents": dict(Counter(change["to_intent"]["id"] for change in changes).most_common()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    settings = get_settings()
    parser.add_argument("--data", type=Path, default=settings.shared_data_dir, help="INTENT_SHARED_DATA_DIR")
    parser.add_argument("--simulated-shoppers", type=int, default=300)
    arguments = parser.parse_args()
    model = IntentModel.load(settings.model_dir)
    print(f"model {model.version} from {settings.model_dir}; data from {arguments.data}")

    simulated = [event_from_dict(e) for s in Simulator(seed=4).shoppers(arguments.simulated_shoppers) for e in s.events]
    rows = [run("simulated (baseline)", simulated, model)]
    for name, reader in DATASETS:
        folder = arguments.data / name
        if not folder.is_dir():
            print(f"{name}: skipped, no folder at {folder}")
            continue
        rows.append(run(name, [event_from_dict(e) for e in reader(folder)], model))

    print(
        f"{'dataset':<21}{'events':>8}{'sessions':>9}{'events/s':>10}{'changes/1k':>11}"
        f"{'w/ change':>10}{'short':>7}{'in vocab':>9}{'fits':>6}  detected intents (changes to)"
    )
    for row in rows:
        total = sum(row["detected_intents"].values())
        fits = "-" if row["trigger_fits_share"] is None else f"{row['trigger_fits_share']:.0%}"
        intents = ", ".join(f"{k} {v / total:.0%}" for k, v in row["detected_intents"].items()) or "none"
        print(
            f"{row['dataset']:<21}{row['events']:>8,}{row['sessions']:>9,}{row['events_per_s']:>10,}"
            f"{row['changes_per_1k_events']:>11}{row['sessions_with_change_share']:>10.1%}"
            f"{row['short_session_share']:>7.0%}{row['in_vocabulary_share']:>9.0%}{fits:>6}  {intents}"
        )
    print(
        f"short: sessions of fewer than {TOO_SHORT} events; in vocab: product events of a category the model "
        "knows; fits: changes whose trigger's category belongs to the new intent"
    )
    print(orjson.dumps(rows).decode())


if __name__ == "__main__":
    main()
