"""The detector on real shopping logs: what it does with sessions it was not trained on.

    python benchmarks/real_data.py [--data ../shared/data]

Runs the stream's own per-event work (`IntentTracker`: windows, ONNX step model, detector, in
micro-batches of 500) over the DIGINETICA and REES46 samples mapped by `intent.datasets`, next to
our simulated shoppers as the baseline, and prints events/s, intent changes per 1,000 events, the
share of sessions too short to judge (fewer than 3 events) and the intents it detected. Ends with
one JSON line. Skips a dataset whose folder is absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from intent.datasets import diginetica_events, rees46_events
from intent.events import event_from_dict
from intent.model import IntentModel
from intent.settings import Settings
from intent.stores import DictStore
from intent.tracking import IntentTracker
from intent.window import WindowPolicy, session_key
from training.simulate import Simulator

TOO_SHORT = 3
BATCH = 500


def run(name: str, raw_events: list[dict[str, Any]], model: IntentModel) -> dict[str, Any]:
    events = sorted((event_from_dict(e) for e in raw_events), key=lambda e: e.timestamp)
    sessions = Counter(session_key(e) for e in events)
    known_vocabulary = sum(
        1 for e in events if e.category is not None and e.category in model.featurizer.vocabulary.categories
    )
    tracker = IntentTracker(model, WindowPolicy(), DictStore(), DictStore())
    changes = []
    started = time.perf_counter()
    for start in range(0, len(events), BATCH):
        chunk = events[start : start + BATCH]
        changes += tracker.process(chunk, [(0, start + i) for i in range(len(chunk))])
        tracker.save()
    seconds = time.perf_counter() - started
    return {
        "dataset": name,
        "events": len(events),
        "sessions": len(sessions),
        "events_per_s": round(len(events) / seconds),
        "changes_per_1k_events": round(1000 * len(changes) / max(1, len(events)), 2),
        "short_session_share": round(sum(1 for n in sessions.values() if n < TOO_SHORT) / max(1, len(sessions)), 3),
        "categories_in_vocabulary": round(known_vocabulary / max(1, len(events)), 3),
        "top_intents": dict(Counter(c["to_intent"]["id"] for c in changes).most_common(4)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Settings().shared_data_dir)
    arguments = parser.parse_args()
    model = IntentModel.load(Settings().model_dir)
    simulated = [e for s in Simulator(seed=4).shoppers(300) for e in s.events]
    rows = [run("simulated (baseline)", simulated, model)]
    for name, folder, reader in (("diginetica", "diginetica", diginetica_events), ("rees46", "rees46", rees46_events)):
        if (arguments.data / folder).is_dir():
            rows.append(run(name, list(reader(arguments.data / folder)), model))
        else:
            print(f"{name}: skipped, no folder at {arguments.data / folder}")
    print(
        f"{'dataset':<22}{'events':>8}{'sessions':>9}{'events/s':>10}{'changes/1k':>11}{'short':>7}"
        f"{'in vocab':>9}  top intents"
    )
    for row in rows:
        print(
            f"{row['dataset']:<22}{row['events']:>8,}{row['sessions']:>9,}{row['events_per_s']:>10,}"
            f"{row['changes_per_1k_events']:>11}{row['short_session_share']:>7.0%}"
            f"{row['categories_in_vocabulary']:>9.0%}  {row['top_intents']}"
        )
    print(orjson.dumps(rows).decode())


if __name__ == "__main__":
    main()
