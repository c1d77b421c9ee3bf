from __future__ import annotations

import dataclasses

import numpy as np
import orjson

from intent.events import ShopperEvent
from intent.features import (
    ABSENT,
    FEATURE_COLUMNS,
    OUT_OF_VOCABULARY,
    Featurizer,
    Vocabulary,
    padded_batches,
)

COFFEE = ShopperEvent(
    message_id="m",
    event_type="Product Viewed",
    name="Product Viewed",
    timestamp=1767600000.0,  # 08:00 UTC
    user_id="u",
    category="coffee beans",
    price=10.56,
    device="mobile",
    channel="app",
    segment="coffee lovers",
)


def column(row: list[int], name: str) -> int:
    return row[FEATURE_COLUMNS.index(name)]


def test_the_vocabulary_survives_the_metadata_round_trip(featurizer: Featurizer) -> None:
    restored = Featurizer(Vocabulary.from_json(orjson.loads(orjson.dumps(featurizer.vocabulary.to_json()))))
    events = [COFFEE, dataclasses.replace(COFFEE, timestamp=COFFEE.timestamp + 40, category="herbal tea")]
    assert np.array_equal(restored.encode_sequence(events), featurizer.encode_sequence(events))
    assert restored.cardinalities == featurizer.cardinalities


def test_unknown_values_map_to_the_out_of_vocabulary_id(featurizer: Featurizer) -> None:
    row = featurizer.encode(
        dataclasses.replace(
            COFFEE,
            category="garden furniture",
            device="smart fridge",
            channel="kiosk",
            segment="new segment",
            event_type="other",
        ),
        None,
    )
    for name in ("category", "device", "channel", "segment"):
        assert column(row, name) == OUT_OF_VOCABULARY, name
    assert column(row, "event_type") == featurizer.cardinalities[0] - 1  # "other" is in the vocabulary


def test_absent_values_map_to_the_absent_id(featurizer: Featurizer) -> None:
    row = featurizer.encode(
        dataclasses.replace(COFFEE, category=None, price=None, device=None, channel=None, segment=None),
        None,
    )
    for name in ("category", "price_bucket", "gap_bucket", "device", "channel", "segment"):
        assert column(row, name) == ABSENT, name


def test_every_id_fits_its_embedding(featurizer: Featurizer) -> None:
    row = featurizer.encode(dataclasses.replace(COFFEE, price=10_000.0), COFFEE.timestamp - 30 * 86400)
    assert all(0 <= value < size for value, size in zip(row, featurizer.cardinalities, strict=True))


def test_price_and_gap_buckets_are_log_spaced(featurizer: Featurizer) -> None:
    prices = [
        column(featurizer.encode(dataclasses.replace(COFFEE, price=p), None), "price_bucket")
        for p in (0.5, 3.0, 10.56, 250.0)
    ]
    assert prices == [1, 2, 4, 7]
    gaps = [
        column(featurizer.encode(COFFEE, COFFEE.timestamp - g), "gap_bucket")
        for g in (5, 45, 600, 7200, 2 * 86400, 9 * 86400)
    ]
    assert gaps == [1, 2, 4, 5, 7, 8]


def test_a_search_is_featurized_as_the_category_its_query_points_to(featurizer: Featurizer) -> None:
    search = dataclasses.replace(COFFEE, event_type="Products Searched", category=None, query="Peppermint tea")
    assert featurizer.category_of(search) == "mint tea"
    assert column(featurizer.encode(search, None), "category") == column(
        featurizer.encode(dataclasses.replace(COFFEE, category="mint tea"), None), "category"
    )
    assert featurizer.category_of(dataclasses.replace(search, query="zzz")) is None


def test_the_hour_is_local_to_the_shoppers_timezone(featurizer: Featurizer) -> None:
    utc = column(featurizer.encode(COFFEE, None), "hour")
    new_york = column(featurizer.encode(dataclasses.replace(COFFEE, timezone="America/New_York"), None), "hour")
    unknown = column(featurizer.encode(dataclasses.replace(COFFEE, timezone="Mars/Olympus"), None), "hour")
    assert (utc, new_york, unknown) == (8, 3, 8)


def test_padding_goes_after_the_events_and_keeps_each_sequence_whole() -> None:
    sequences = [np.full((length, len(FEATURE_COLUMNS)), length) for length in (3, 1, 2)]
    batches = padded_batches(sequences, batch_size=2)
    assert [positions for positions, _ in batches] == [[1, 2], [0]]
    _, batch = batches[0]
    assert batch.shape == (2, 2, len(FEATURE_COLUMNS))
    assert batch[0, 0, 0] == 1 and batch[0, 1, 0] == 0
