"""DIGINETICA views and purchases as our event dicts.

DIGINETICA (CIKM Cup 2016), a folder with `train-item-views*.csv`, `train-purchases*.csv` and
`product-categories*.csv` (`;`-separated):
- a view row becomes `Product Viewed`: `item_id` -> `properties.product_id`, the item's
  `categoryId` (from product-categories) -> `properties.category` as `diginetica:<id>`. The
  categories are anonymous numbers, so they are out of our model's vocabulary;
- `session_id` -> `context.sessionId` `diginetica-<id>` and `anonymousId` `diginetica-session-<id>`
  (the shoppers are mostly anonymous); `user_id`, when it is not `NA`, also -> `userId`
  `diginetica-user-<id>`;
- time: `timeframe` counts milliseconds since the session started and `eventdate` is the day of
  the row, so the session is taken to start at midnight UTC of its first view's day and every event
  (purchases included, which can come days later) is placed at that start + `timeframe`. A row's
  own `eventdate` alone would be wrong for purchases made days after the session started;
- the purchase rows of one `ordernumber` become one `Order Completed` (`properties.order_id`,
  `properties.products` = its items with their categories) at the latest of their timeframes;
- no prices exist, and none are invented; `messageId` = `diginetica-view-<row>` (the row's
  position in the views file) or `diginetica-order-<ordernumber>`.
Events come session by session in the file's session order, in time order within a session (a
purchase after a view at the same moment). Purchases of sessions without views come last, their
session start inferred from `eventdate` minus the whole days of `timeframe`. A known shopper's
sessions of one day all start at the same synthetic midnight: the data do not say when.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from intent.datasets.common import DatasetError, dataset_folder, one_file, track

_DAY_MS = 86_400_000


def diginetica_events(path: Path) -> Iterator[dict[str, Any]]:
    folder = dataset_folder(Path(path))
    views_path = one_file(folder, "train-item-views*.csv")
    categories: dict[str, str] = {}
    categories_path = one_file(folder, "product-categories*.csv")
    with categories_path.open(newline="") as handle:
        for row in csv.DictReader(handle, delimiter=";"):
            categories[row["itemId"]] = f"diginetica:{row['categoryId']}"
    purchases = _diginetica_purchases(folder)

    with views_path.open(newline="") as handle:
        finished: set[str] = set()
        session: str | None = None
        views: list[tuple[int, dict[str, str]]] = []
        for row_number, row in enumerate(csv.DictReader(handle, delimiter=";")):
            if row["session_id"] != session:
                if session is not None:
                    yield from _diginetica_session(session, views, purchases.pop(session, {}), categories)
                    finished.add(session)
                session, views = row["session_id"], []
                if session in finished:
                    raise DatasetError(f"{views_path}: the rows of session {session} are not together")
            views.append((row_number, row))
        if session is not None:
            yield from _diginetica_session(session, views, purchases.pop(session, {}), categories)
    for session, orders in purchases.items():
        yield from _diginetica_session(session, [], orders, categories)


def _diginetica_purchases(folder: Path) -> dict[str, dict[str, list[dict[str, str]]]]:
    """session -> ordernumber -> its rows; a folder without a purchases file has no orders."""
    purchases: dict[str, dict[str, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    matches = sorted(folder.glob("train-purchases*.csv"))
    if matches:
        with matches[0].open(newline="") as handle:
            for row in csv.DictReader(handle, delimiter=";"):
                purchases[row["sessionId"]][row["ordernumber"]].append(row)
    return purchases


def _diginetica_session(
    session: str,
    views: list[tuple[int, dict[str, str]]],
    orders: dict[str, list[dict[str, str]]],
    categories: dict[str, str],
) -> list[dict[str, Any]]:
    if views:
        start = _midnight(min(row["eventdate"] for _, row in views))
    else:
        first = min((row for rows in orders.values() for row in rows), key=lambda row: int(row["timeframe"]))
        start = _midnight(first["eventdate"]) - timedelta(days=int(first["timeframe"]) // _DAY_MS)
    users = [row["user_id"] for _, row in views] + [row["userId"] for rows in orders.values() for row in rows]
    user = next((user for user in users if user and user != "NA"), None)
    identity: dict[str, Any] = {
        "anonymousId": f"diginetica-session-{session}",
        "context": {"sessionId": f"diginetica-{session}"},
    }
    if user is not None:
        identity["userId"] = f"diginetica-user-{user}"

    timed: list[tuple[float, int, dict[str, Any]]] = []
    for row_number, row in views:
        at = start + timedelta(milliseconds=int(row["timeframe"]))
        properties = _diginetica_product(row["item_id"], categories)
        message = f"diginetica-view-{row_number}"
        timed.append((at.timestamp(), 0, track("Product Viewed", message, at, properties, identity)))
    for order_number, rows in orders.items():
        at = start + timedelta(milliseconds=max(int(row["timeframe"]) for row in rows))
        properties = {
            "order_id": order_number,
            "products": [_diginetica_product(row["itemId"], categories) for row in rows],
        }
        message = f"diginetica-order-{order_number}"
        timed.append((at.timestamp(), 1, track("Order Completed", message, at, properties, identity)))
    timed.sort(key=lambda item: (item[0], item[1]))  # stable: file order among equal times
    return [event for _, _, event in timed]


def _diginetica_product(item: str, categories: dict[str, str]) -> dict[str, Any]:
    product: dict[str, Any] = {"product_id": item}
    if item in categories:
        product["category"] = categories[item]
    return product


def _midnight(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)
