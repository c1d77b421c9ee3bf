"""Training data: labelled event sequences, from the simulator or from the user's own files.

A labelled file is the product's event format with one extra top-level field, `intent`:
- JSONL: one event per line, e.g. `{"event": "Product Viewed", "userId": "u1", ..., "intent": "coffee_ritual"}`
- Parquet: one row per event with the flat columns of `PARQUET_COLUMNS` (missing ones are absent).
Events are grouped per shopper (userId, else anonymousId) and ordered by time. Where `intent` is
missing or null, a weak label comes from a category -> intent mapping (by default each category's
strongest intent in the taxonomy): events without a category keep the label before them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from intent.events import InvalidEvent, ShopperEvent, event_from_dict
from intent.features import Featurizer
from intent.simulate import SimulatedShopper
from intent.taxonomy import Taxonomy

PARQUET_COLUMNS: dict[str, str] = {
    # column -> where it goes in the event JSON
    "event": "event",
    "messageId": "messageId",
    "userId": "userId",
    "anonymousId": "anonymousId",
    "timestamp": "timestamp",
    "product_id": "properties.product_id",
    "sku": "properties.sku",
    "name": "properties.name",
    "category": "properties.category",
    "brand": "properties.brand",
    "price": "properties.price",
    "quantity": "properties.quantity",
    "query": "properties.query",
    "sessionId": "context.sessionId",
    "device": "context.device.type",
    "channel": "context.channel",
    "locale": "context.locale",
    "timezone": "context.timezone",
    "segment": "context.traits.segment",
    "intent": "intent",
}


@dataclass
class LabelledSequence:
    key: str
    events: list[ShopperEvent]
    labels: np.ndarray  # intent index per event
    story: str | None = None

    @property
    def segment(self) -> str | None:
        return self.events[0].segment if self.events else None


def from_simulation(shoppers: Iterable[SimulatedShopper], taxonomy: Taxonomy) -> list[LabelledSequence]:
    index = {intent_id: position for position, intent_id in enumerate(taxonomy.ids)}
    return [
        LabelledSequence(
            shopper.shopper_id,
            [event_from_dict(event) for event in shopper.events],
            np.array([index[i] for i in shopper.intents], dtype=np.int64),
            shopper.story,
        )
        for shopper in shoppers
    ]


def read_labelled_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [_nest(row) for row in pq.read_table(path).to_pylist()]
    with path.open("rb") as handle:
        return [orjson.loads(line) for line in handle if line.strip()]


def _nest(row: Mapping[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = {}
    for column, value in row.items():
        if value is None or column not in PARQUET_COLUMNS:
            continue
        target = event
        *parents, leaf = PARQUET_COLUMNS[column].split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value.isoformat() if hasattr(value, "isoformat") else value
    return event


def from_records(
    records: Iterable[dict[str, Any]],
    taxonomy: Taxonomy,
    featurizer: Featurizer,
    category_intents: Mapping[str, str] | None = None,
) -> tuple[list[LabelledSequence], dict[str, int]]:
    """Group labelled records into sequences; returns them with counts of what was used."""
    index = {intent_id: position for position, intent_id in enumerate(taxonomy.ids)}
    mapping = dict(category_intents or taxonomy.category_to_intent())
    browsing = index[taxonomy.browsing_intent]
    by_shopper: dict[str, list[tuple[ShopperEvent, str | None]]] = defaultdict(list)
    counts = {"events": 0, "rejected": 0, "labelled": 0, "weakly_labelled": 0}
    for number, record in enumerate(records):
        label = record.pop("intent", None)
        try:
            event = event_from_dict(record, message_id_fallback=f"line-{number}")
        except InvalidEvent:
            counts["rejected"] += 1
            continue
        if label is not None and label not in index:
            raise ValueError(f"record {number}: unknown intent {label!r}")
        by_shopper[event.shopper_id].append((event, label))
        counts["events"] += 1
    sequences = []
    for key, rows in by_shopper.items():
        rows.sort(key=lambda row: row[0].timestamp)
        labels = []
        weak = browsing
        for event, label in rows:
            category = featurizer.category_of(event)
            if category is not None:
                weak = index.get(mapping.get(category, taxonomy.browsing_intent), browsing)
            if label is None:
                counts["weakly_labelled"] += 1
                labels.append(weak)
            else:
                counts["labelled"] += 1
                labels.append(index[label])
        sequences.append(LabelledSequence(key, [event for event, _ in rows], np.array(labels, dtype=np.int64)))
    return sequences, counts


def encode(featurizer: Featurizer, sequences: Sequence[LabelledSequence]) -> list[np.ndarray]:
    return [featurizer.encode_sequence(sequence.events) for sequence in sequences]
