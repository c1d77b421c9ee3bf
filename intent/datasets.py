"""Public shopping logs as shopper events, for `intent replay --format ...` and evaluation.

The files are read lazily and never copied into this repository (samples live in
`INTENT_SHARED_DATA_DIR`, `../shared/data` by default).

DIGINETICA (CIKM Cup 2016), a folder with `train-item-views*.csv`, `train-purchases*.csv` and
`product-categories*.csv` (`;`-separated):
- each view row becomes a `Product Viewed`: `item_id` -> `properties.product_id`, the item's
  `categoryId` -> `properties.category` as `diginetica:<id>` (the categories are anonymous numbers,
  so they are out of our model's vocabulary), `session_id` -> `context.sessionId`;
- `user_id` -> `userId` when it is not `NA`, else `anonymousId` = `diginetica-session-<id>`;
- `timestamp` = `eventdate` (midnight UTC) + `timeframe` (milliseconds since the session started);
- each purchase row becomes an `Order Completed` with that product, at its own timeframe;
- no prices exist (none are invented); `messageId` = `diginetica-<session>-<view|order>-<row>`.
Events are yielded session by session, in time order within each session.

REES46 (multi-category store), a CSV with `event_time,event_type,product_id,category_id,
category_code,brand,price,user_id,user_session`:
- `event_type` view / cart / remove_from_cart / purchase -> Product Viewed / Product Added /
  Product Removed / Order Completed (with `properties.products` = the product);
- `category_code` (e.g. `appliances.kitchen.kettle`) -> `properties.category`, else
  `rees46:<category_id>`; `brand`, `price` as they are; `user_id` -> `userId`;
  `user_session` -> `context.sessionId`; `event_time` (`2019-10-01 00:00:00 UTC`) -> `timestamp`;
- `messageId` = `rees46-<row>`. Rows are yielded in file order (the file is in time order).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from intent.events import iso_time

FORMATS = ("jsonl", "diginetica", "rees46")

_REES46_EVENTS = {
    "view": "Product Viewed",
    "cart": "Product Added",
    "remove_from_cart": "Product Removed",
    "purchase": "Order Completed",
}


class DatasetError(ValueError):
    pass


def _one(folder: Path, pattern: str) -> Path:
    matches = sorted(folder.glob(pattern))
    if not matches:
        raise DatasetError(f"{folder}: no file matching {pattern}")
    return matches[0]


def diginetica_events(folder: Path) -> Iterator[dict[str, Any]]:
    folder = Path(folder)
    categories: dict[str, str] = {}
    with _one(folder, "product-categories*.csv").open(newline="") as handle:
        for row in csv.DictReader(handle, delimiter=";"):
            categories[row["itemId"]] = row["categoryId"]
    purchases: dict[str, list[dict[str, str]]] = defaultdict(list)
    purchase_files = sorted(folder.glob("train-purchases*.csv"))
    if purchase_files:
        with purchase_files[0].open(newline="") as handle:
            for row in csv.DictReader(handle, delimiter=";"):
                purchases[row["sessionId"]].append(row)

    def session_events(session: str, views: list[tuple[int, dict[str, str]]]) -> list[dict[str, Any]]:
        events = []
        for number, row in views:
            events.append(
                _diginetica_event(
                    session,
                    row["user_id"],
                    row["item_id"],
                    row["timeframe"],
                    row["eventdate"],
                    "view",
                    number,
                    categories,
                )
            )
        for number, row in enumerate(purchases.get(session, [])):
            events.append(
                _diginetica_event(
                    session,
                    row["userId"],
                    row["itemId"],
                    row["timeframe"],
                    row["eventdate"],
                    "order",
                    number,
                    categories,
                )
            )
        events.sort(key=lambda e: e["timestamp"])
        return events

    with _one(folder, "train-item-views*.csv").open(newline="") as handle:
        current: str | None = None
        views: list[tuple[int, dict[str, str]]] = []
        for number, row in enumerate(csv.DictReader(handle, delimiter=";")):
            if row["session_id"] != current and current is not None:
                yield from session_events(current, views)
                views = []
            current = row["session_id"]
            views.append((number, row))
        if current is not None:
            yield from session_events(current, views)


def _diginetica_event(
    session: str,
    user: str,
    item: str,
    timeframe: str,
    day: str,
    kind: str,
    number: int,
    categories: dict[str, str],
) -> dict[str, Any]:
    at = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(milliseconds=int(timeframe))
    properties: dict[str, Any] = {"product_id": item}
    if item in categories:
        properties["category"] = f"diginetica:{categories[item]}"
    if kind == "order":
        properties = {"products": [properties]}
    event: dict[str, Any] = {
        "type": "track",
        "event": "Product Viewed" if kind == "view" else "Order Completed",
        "messageId": f"diginetica-{session}-{kind}-{number}",
        "timestamp": iso_time(at.timestamp()),
        "properties": properties,
        "context": {"sessionId": f"diginetica-{session}"},
    }
    if user and user != "NA":
        event["userId"] = f"diginetica-user-{user}"
    else:
        event["anonymousId"] = f"diginetica-session-{session}"
    return event


def rees46_events(path: Path) -> Iterator[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = _one(path, "*.csv")
    with path.open(newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle)):
            name = _REES46_EVENTS.get(row["event_type"])
            if name is None:
                continue
            properties: dict[str, Any] = {
                "product_id": row["product_id"],
                "category": row["category_code"] or f"rees46:{row['category_id']}",
            }
            if row["brand"]:
                properties["brand"] = row["brand"]
            if row["price"]:
                properties["price"] = float(row["price"])
            if name == "Order Completed":
                properties = {"products": [properties], "price": properties.get("price")}
                if properties["price"] is None:
                    del properties["price"]
            at = datetime.strptime(row["event_time"], "%Y-%m-%d %H:%M:%S %Z").replace(tzinfo=UTC)
            yield {
                "type": "track",
                "event": name,
                "messageId": f"rees46-{number}",
                "userId": f"rees46-user-{row['user_id']}",
                "timestamp": iso_time(at.timestamp()),
                "properties": properties,
                "context": {"sessionId": row["user_session"]} if row["user_session"] else {},
            }


def dataset_events(format_: str, path: Path) -> Iterator[dict[str, Any]]:
    if format_ == "diginetica":
        return diginetica_events(path)
    if format_ == "rees46":
        return rees46_events(path)
    raise DatasetError(f"unknown format {format_!r}; known: {', '.join(FORMATS)}")
