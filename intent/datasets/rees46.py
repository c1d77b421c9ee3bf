"""REES46 store events as our event dicts.

REES46 (multi-category store), a CSV, or a folder of them read in the order of their first event,
with `event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session`:
- `event_type` view / cart / remove_from_cart / purchase -> `Product Viewed` / `Product Added`
  (`quantity` 1: a cart row is one unit) / `Product Removed` / `Order Completed`;
- `product_id`, `brand`, `price` -> `properties.*` as they are; `category_code`
  (`appliances.kitchen.kettle`) -> `properties.category`, else `rees46:<category_id>`;
- a purchase carries the product in `properties.products` and its price as `revenue` (an order's
  own `price` is not a Segment field, and our simulated orders have none);
- `user_id` -> `userId` `rees46-user-<id>`; `user_session` -> `context.sessionId`;
  `event_time` (`2019-10-01 00:00:00 UTC`) -> `timestamp`; `messageId` = `rees46-<file>-<row>`.
Rows come in file order, which is time order.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from intent.datasets.common import DatasetError, track

_REES46_EVENTS = {
    "view": "Product Viewed",
    "cart": "Product Added",
    "remove_from_cart": "Product Removed",
    "purchase": "Order Completed",
}


def rees46_events(path: Path) -> Iterator[dict[str, Any]]:
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.csv"), key=_rees46_first_time)
    if not files:
        raise DatasetError(f"{path}: no CSV file")
    for file in files:
        yield from _rees46_file(file)


def _rees46_first_time(path: Path) -> str:
    with path.open(newline="") as handle:
        first = next(csv.DictReader(handle), None)
    return first["event_time"] if first else ""


def _rees46_file(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(newline="") as handle:
        for row_number, row in enumerate(csv.DictReader(handle)):
            name = _REES46_EVENTS.get(row["event_type"])
            if name is None:
                raise DatasetError(f"{path}: row {row_number + 1}: unknown event_type {row['event_type']!r}")
            product: dict[str, Any] = {
                "product_id": row["product_id"],
                "category": row["category_code"] or f"rees46:{row['category_id']}",
            }
            if row["brand"]:
                product["brand"] = row["brand"]
            price = float(row["price"]) if row["price"] else None
            if name == "Order Completed":
                properties: dict[str, Any] = {"products": [product]}
                if price is not None:
                    product["price"] = price
                    properties["revenue"] = price
            else:
                properties = product
                if price is not None:
                    properties["price"] = price
                if name == "Product Added":
                    properties["quantity"] = 1
            identity: dict[str, Any] = {"userId": f"rees46-user-{row['user_id']}"}
            if row["user_session"]:
                identity["context"] = {"sessionId": row["user_session"]}
            at = datetime.strptime(row["event_time"], "%Y-%m-%d %H:%M:%S %Z").replace(tzinfo=UTC)
            yield track(name, f"rees46-{path.stem}-{row_number}", at, properties, identity)
