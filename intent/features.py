"""Event -> model input: the ONLY featurization, imported by training and by the stream alike.

Every event becomes a fixed row of small integer ids, one per column of FEATURE_COLUMNS. Id 0
means "absent" (an event with no category, the first event of a sequence), id 1 means "a value
the vocabulary has never seen", so a new category or device never breaks inference.
The vocabularies are saved in the model's metadata and rebuilt from it when serving.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from intent.events import EVENT_TYPES, OTHER_EVENT, ShopperEvent
from intent.taxonomy import Product

FEATURE_SPEC_VERSION = 1
FEATURE_COLUMNS: tuple[str, ...] = (
    "event_type",
    "category",
    "price_bucket",
    "gap_bucket",
    "hour",
    "device",
    "channel",
    "segment",
)
ABSENT, OUT_OF_VOCABULARY, FIRST_KNOWN_ID = 0, 1, 2

# Upper edges of the buckets; log-spaced because what matters is "cheap vs premium", not cents.
PRICE_EDGES: tuple[float, ...] = (2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
# Seconds: within a page view, browsing, a break, a new session, later today, tomorrow, days later.
GAP_EDGES: tuple[float, ...] = (10.0, 60.0, 300.0, 1800.0, 3 * 3600.0, 86400.0, 3 * 86400.0)
DEFAULT_DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
DEFAULT_CHANNELS: tuple[str, ...] = ("web", "app", "email", "social")
_TOKEN = re.compile(r"[a-z]{3,}")


def query_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Vocabulary:
    event_types: tuple[str, ...]
    categories: tuple[str, ...]
    devices: tuple[str, ...]
    channels: tuple[str, ...]
    segments: tuple[str, ...]
    # search term -> the catalogue category it points to, so a search says what it is for
    query_terms: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "event_types": list(self.event_types),
            "categories": list(self.categories),
            "devices": list(self.devices),
            "channels": list(self.channels),
            "segments": list(self.segments),
            "query_terms": dict(self.query_terms),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Vocabulary:
        return cls(
            event_types=tuple(raw["event_types"]),
            categories=tuple(raw["categories"]),
            devices=tuple(raw["devices"]),
            channels=tuple(raw["channels"]),
            segments=tuple(raw["segments"]),
            query_terms=dict(raw["query_terms"]),
        )


def build_vocabulary(
    catalogue: Sequence[Product],
    segments: Iterable[str] = (),
    extra_categories: Iterable[str] = (),
    devices: Sequence[str] = DEFAULT_DEVICES,
    channels: Sequence[str] = DEFAULT_CHANNELS,
) -> Vocabulary:
    categories = sorted({p.category for p in catalogue} | set(extra_categories))
    return Vocabulary(
        event_types=(*EVENT_TYPES, OTHER_EVENT),
        categories=tuple(categories),
        devices=tuple(devices),
        channels=tuple(channels),
        segments=tuple(sorted(set(segments))),
        query_terms=_query_terms(catalogue),
    )


def _query_terms(catalogue: Sequence[Product]) -> dict[str, str]:
    """Terms of category and product names that point mostly (>= half the time) at one category."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for product in catalogue:
        for token in set(query_tokens(f"{product.category} {product.name}")):
            counts[token][product.category] += 1
    terms = {}
    for token, by_category in sorted(counts.items()):
        category, count = by_category.most_common(1)[0]
        if count * 2 >= sum(by_category.values()):
            terms[token] = category
    return terms


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


class Featurizer:
    """Turns events into id rows with a fixed vocabulary. Cheap enough for the hot path."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self._event_ids = _ids(vocabulary.event_types)
        self._category_ids = _ids(vocabulary.categories)
        self._device_ids = _ids(vocabulary.devices)
        self._channel_ids = _ids(vocabulary.channels)
        self._segment_ids = _ids(vocabulary.segments)
        self.cardinalities: tuple[int, ...] = (
            FIRST_KNOWN_ID + len(vocabulary.event_types),
            FIRST_KNOWN_ID + len(vocabulary.categories),
            1 + len(PRICE_EDGES) + 1,
            1 + len(GAP_EDGES) + 1,
            24,
            FIRST_KNOWN_ID + len(vocabulary.devices),
            FIRST_KNOWN_ID + len(vocabulary.channels),
            FIRST_KNOWN_ID + len(vocabulary.segments),
        )

    def category_of(self, event: ShopperEvent) -> str | None:
        """The event's category; for a search, the category its query points to."""
        if event.category is not None or event.query is None:
            return event.category
        votes = Counter(
            self.vocabulary.query_terms[token]
            for token in query_tokens(event.query)
            if token in self.vocabulary.query_terms
        )
        return votes.most_common(1)[0][0] if votes else None

    def encode(self, event: ShopperEvent, previous_timestamp: float | None) -> list[int]:
        return [
            self._event_ids.get(event.event_type, OUT_OF_VOCABULARY),
            _lookup(self._category_ids, self.category_of(event)),
            0 if event.price is None else 1 + bisect.bisect_left(PRICE_EDGES, event.price),
            0
            if previous_timestamp is None
            else 1 + bisect.bisect_left(GAP_EDGES, max(0.0, event.timestamp - previous_timestamp)),
            _local_hour(event),
            _lookup(self._device_ids, event.device),
            _lookup(self._channel_ids, event.channel),
            _lookup(self._segment_ids, event.segment),
        ]

    def encode_sequence(self, events: Sequence[ShopperEvent]) -> np.ndarray:
        """Rows for a whole sequence, shape (len(events), len(FEATURE_COLUMNS)), int64."""
        rows = []
        previous = None
        for event in events:
            rows.append(self.encode(event, previous))
            previous = event.timestamp
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), len(FEATURE_COLUMNS))


def _ids(values: Sequence[str]) -> dict[str, int]:
    return {value: FIRST_KNOWN_ID + position for position, value in enumerate(values)}


def _lookup(ids: dict[str, int], value: str | None) -> int:
    if value is None:
        return ABSENT
    return ids.get(value, OUT_OF_VOCABULARY)


def _local_hour(event: ShopperEvent) -> int:
    zone = _zone(event.timezone) if event.timezone else None
    if zone is None:
        return int(event.timestamp // 3600 % 24)
    return datetime.fromtimestamp(event.timestamp, zone).hour


def padded_batches(sequences: Sequence[np.ndarray], batch_size: int) -> list[tuple[list[int], np.ndarray]]:
    """Group encoded sequences of similar length into zero-padded (batch, time, columns) arrays.

    Returns (positions of the sequences in the input, array) pairs. Padding goes at the end, so a
    causal model's outputs for the real events are unchanged.
    """
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        longest = max(len(sequences[i]) for i in chosen)
        batch = np.zeros((len(chosen), longest, len(FEATURE_COLUMNS)), dtype=np.int64)
        for row, i in enumerate(chosen):
            batch[row, : len(sequences[i])] = sequences[i]
        batches.append((chosen, batch))
    return batches
