"""Instacart baskets as our event dicts, their aisles mapped to our catalogue's categories.

Instacart (Market Basket Analysis 2017), a folder with `orders.csv`, `products.csv`,
`aisles.csv` and `order_products__*.csv`. The one dataset whose aisles our taxonomy can read:
- each basket line becomes `Product Added` (`product_id`, `name` = `product_name`, `quantity` 1,
  `category` = the aisle mapped by `INSTACART_AISLE_CATEGORIES` and `INSTACART_NAME_RULES` to one
  of our catalogue's categories, else `instacart:<aisle>`, out of our vocabulary), in
  `add_to_cart_order`; then the order becomes `Order Completed` with all its products;
- `user_id` -> `userId` `instacart-user-<id>`; the order is the session (`instacart-order-<id>`);
- there are no prices and no timestamps, only `order_dow`, `order_hour_of_day` and
  `days_since_prior_order`, so times are synthesised, deterministically: a shopper's first listed
  order falls in the week of Sunday 2017-01-01 on its `order_dow` (0 read as Sunday) at its hour;
  each later one `days_since_prior_order` days after the previous listed order (a lower bound when
  order numbers in between are missing), at its own hour, and never before the previous order
  ended; inside an order, items are added 30 s apart and the order completes 60 s after the last;
- `messageId` = `instacart-<order>-add-<add_to_cart_order>` or `instacart-<order>-order`.
Events come shopper by shopper (in the order shoppers first appear in `orders.csv`), each
shopper's orders by `order_number`. `orders.csv` is held in memory (a tuple per order); the basket
files are indexed by byte offset and each basket is read when its turn comes. Orders without a
basket line (the `train`/`test` orders when only `order_products__prior.csv` is present) and
basket lines of unlisted orders yield nothing.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from intent.datasets.common import DatasetError, dataset_folder, one_file, track

# Instacart aisle -> our catalogue category (intent/domains/demo/catalogue.csv), for the aisles that are
# one of our categories as a whole. Aisles not named here, nor matched by a rule below, keep
# their own name (`instacart:<aisle>`) and are out of our model's vocabulary.
INSTACART_AISLE_CATEGORIES: dict[str, str] = {
    "coffee": "ground coffee",
    "tea": "black tea",
    "cold flu allergy": "cold & flu remedies",
    "diapers wipes": "diapers",
    "baby food formula": "baby food",
    "baby bath body care": "baby skin care",
    "dog food care": "dog food",
    "cat food care": "cat food",
    "chips pretzels": "chips & snacks",
    "popcorn jerky": "chips & snacks",
    "soft drinks": "soft drinks",
    "beers coolers": "beer & wine",
    "red wines": "beer & wine",
    "white wines": "beer & wine",
    "specialty wines champagnes": "beer & wine",
    "fresh dips tapenades": "dips & salsa",
    "preserved dips spreads": "dips & salsa",
    "plates bowls cups flatware": "party supplies",
    "cereal": "cereal & granola",
    "granola": "cereal & granola",
    "yogurt": "yogurt",
    "fresh fruits": "fresh fruit",
    "fresh vegetables": "fresh vegetables",
    "cookies cakes": "biscuits & cookies",
    "cleaning products": "surface cleaners",
    "dish detergents": "dish care",
    "laundry": "laundry",
    "trash bags liners": "trash bags",
    "grains rice dried goods": "rice & pasta",
    "bulk grains rice dried goods": "rice & pasta",
    "dry pasta": "rice & pasta",
    "canned meals beans": "canned goods",
    "canned jarred vegetables": "canned goods",
    "canned meat seafood": "canned goods",
    "canned fruit applesauce": "canned goods",
    "energy granola bars": "energy bars",
    "protein meal replacements": "protein powder",
    "energy sports drinks": "sports drinks",
    "hair care": "shampoo & conditioner",
    "oral hygiene": "oral care",
    "deodorants": "deodorant",
    "skin care": "skin care",
    "facial care": "skin care",
    "body lotions soap": "bath & body",
    "soap": "bath & body",
    "meat counter": "meat & fish",
    "seafood counter": "meat & fish",
    "poultry counter": "meat & fish",
    "packaged meat": "meat & fish",
    "packaged poultry": "meat & fish",
    "packaged seafood": "meat & fish",
    "spices seasonings": "spices",
    "milk": "milk & creamer",
    "frozen meals": "frozen meals",
    "bread": "bread & bakery",
    "buns rolls": "bread & bakery",
    "breakfast bakery": "bread & bakery",
    "kitchen supplies": "kitchen tools",
}

# (aisle, words that start a word of the product name, category or None = leave unmapped), tried
# in order before the aisle's default: mixed aisles hold several of our categories (the tea
# aisle has mint, herbal and green teas, and bottled iced teas that are drinks, not tea).
INSTACART_NAME_RULES: tuple[tuple[str, str, str | None], ...] = (
    ("tea", "kombucha|iced|yerba", "soft drinks"),
    ("tea", "mint|peppermint", "mint tea"),
    ("tea", "chamomile|herbal|valerian|sleep|rooibos|infusion", "herbal tea"),
    ("tea", "green|matcha", "green tea"),
    ("coffee", "k cup|k-cup|pods|capsules", "coffee pods"),
    ("coffee", "whole bean", "coffee beans"),
    ("coffee", "filter", "coffee filters"),
    ("cold flu allergy", "allerg", "antihistamines"),
    ("cold flu allergy", "nasal", "nasal sprays"),
    ("cold flu allergy", "drops|lozenge|throat", "throat lozenges"),
    ("cold flu allergy", "vitamin c", "vitamin c & zinc"),
    ("vitamins supplements", "vitamin c|zinc|elderberry", "vitamin c & zinc"),
    ("vitamins supplements", "melatonin", "sleep aids"),
    ("eye ear care", "eye", "eye drops"),
    ("first aid", "thermometer", "thermometers"),
    ("paper goods", "toilet|bath tissue|bathroom tissue", "toilet paper"),
    ("paper goods", "tissue", "tissues"),
    ("paper goods", "towel", "paper towels"),
    ("diapers wipes", "wipes", "baby wipes"),
    ("dog food care", "treat|snack|chew|biscuit", "pet treats"),
    ("cat food care", "litter", "cat litter"),
    ("cat food care", "treat", "pet treats"),
    ("hot cereal pancake mixes", "oat", "oatmeal"),
    ("honeys syrups nectars", "honey", "honey"),
    ("cream", "creamer|half", "milk & creamer"),
    ("candy chocolate", "chocolate|cacao", "chocolates"),
    ("oils vinegars", "oil", "cooking oil"),
    ("air fresheners candles", "candle", "candles"),
    ("more household", "batter", "batteries"),
    ("more household", "bulb", "light bulbs"),
    ("more household", "flower|roses", "flowers"),
)
_NAME_RULES = tuple(
    (aisle, re.compile(rf"\b(?:{words})", re.IGNORECASE), category) for aisle, words, category in INSTACART_NAME_RULES
)
# Sunday: Instacart does not document its day numbering; 0 = Sunday is the common reading.
INSTACART_FIRST_WEEK = datetime(2017, 1, 1, tzinfo=UTC)
_SECONDS_BETWEEN_ADDS = 30.0
_SECONDS_TO_COMPLETE = 60.0


def instacart_category(aisle: str, product_name: str) -> str | None:
    """Our catalogue category for an Instacart product, or None when our taxonomy has none."""
    for rule_aisle, words, category in _NAME_RULES:
        if rule_aisle == aisle and words.search(product_name):
            return category
    return INSTACART_AISLE_CATEGORIES.get(aisle)


def instacart_events(path: Path) -> Iterator[dict[str, Any]]:
    folder = dataset_folder(Path(path))
    with one_file(folder, "aisles.csv").open(newline="") as handle:
        aisles = {row["aisle_id"]: row["aisle"] for row in csv.DictReader(handle)}
    products: dict[str, tuple[str, str]] = {}  # product_id -> (name, category)
    with one_file(folder, "products.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            aisle = aisles.get(row["aisle_id"], "missing")
            category = instacart_category(aisle, row["product_name"]) or f"instacart:{aisle}"
            products[row["product_id"]] = (row["product_name"], category)
    orders_by_user: dict[str, list[tuple[int, str, int, int, float]]] = {}
    with one_file(folder, "orders.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            days = float(row["days_since_prior_order"]) if row["days_since_prior_order"] else 0.0
            orders_by_user.setdefault(row["user_id"], []).append(
                (int(row["order_number"]), row["order_id"], int(row["order_dow"]), int(row["order_hour_of_day"]), days)
            )
    basket_files = sorted(folder.glob("order_products__*.csv"))
    if not basket_files:
        raise DatasetError(f"{folder}: no file matching order_products__*.csv")
    baskets = _BasketIndex(basket_files)

    with ExitStack() as stack:
        handles = {file: stack.enter_context(file.open("rb")) for file in basket_files}
        for user, orders in orders_by_user.items():
            identity_user = f"instacart-user-{user}"
            day: float | None = None
            previous_end = float("-inf")
            for _, order_id, weekday, hour, days_since_prior in sorted(orders):
                day = float(weekday) if day is None else day + days_since_prior
                start = INSTACART_FIRST_WEEK.timestamp() + day * 86400.0 + hour * 3600.0
                start = max(start, previous_end + _SECONDS_TO_COMPLETE)
                items = baskets.read(handles, order_id)
                if not items:
                    continue
                identity = {"userId": identity_user, "context": {"sessionId": f"instacart-order-{order_id}"}}
                moment = start
                for position, (add_to_cart_order, product_id) in enumerate(items):
                    moment = start + position * _SECONDS_BETWEEN_ADDS
                    name, category = products.get(product_id, (None, "instacart:missing"))
                    properties: dict[str, Any] = {"product_id": product_id, "category": category, "quantity": 1}
                    if name:
                        properties["name"] = name
                    message = f"instacart-{order_id}-add-{add_to_cart_order}"
                    yield track("Product Added", message, _utc(moment), properties, identity)
                previous_end = moment + _SECONDS_TO_COMPLETE
                order = {"order_id": order_id, "products": [{"product_id": p, "quantity": 1} for _, p in items]}
                yield track("Order Completed", f"instacart-{order_id}-order", _utc(previous_end), order, identity)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class _BasketIndex:
    """Where each order's lines start in the `order_products__*.csv` files, so a basket is read
    when its shopper's turn comes instead of holding every line in memory. The published files
    keep an order's lines together; a file that does not is refused."""

    def __init__(self, files: Iterable[Path]) -> None:
        self.starts: dict[str, tuple[Path, int]] = {}
        self.columns: dict[Path, tuple[int, int, int]] = {}
        for file in files:
            with file.open("rb") as handle:
                header = handle.readline()
                names = next(csv.reader([header.decode()]))
                try:
                    order_column = names.index("order_id")
                    self.columns[file] = (order_column, names.index("product_id"), names.index("add_to_cart_order"))
                except ValueError:
                    expected = "order_id, product_id, add_to_cart_order"
                    raise DatasetError(f"{file}: expected the columns {expected}") from None
                offset = len(header)
                current: str | None = None
                for line in handle:
                    order_id = _fields(line)[order_column]
                    if order_id != current:
                        if order_id in self.starts:
                            raise DatasetError(f"{file}: the lines of order {order_id} are not together")
                        self.starts[order_id] = (file, offset)
                        current = order_id
                    offset += len(line)

    def read(self, handles: dict[Path, IO[bytes]], order_id: str) -> list[tuple[int, str]]:
        """The order's (add_to_cart_order, product_id) in cart order; empty without a basket."""
        if order_id not in self.starts:
            return []
        file, offset = self.starts[order_id]
        order_column, product_column, position_column = self.columns[file]
        handle = handles[file]
        handle.seek(offset)
        items = []
        for line in handle:
            fields = _fields(line)
            if fields[order_column] != order_id:
                break
            items.append((int(fields[position_column]), fields[product_column]))
        return sorted(items)


def _fields(line: bytes) -> list[str]:
    # The basket files hold only numbers, possibly quoted: a split is enough, and far cheaper
    # than a CSV parser over tens of millions of lines.
    return [field.strip().strip('"') for field in line.decode().split(",")]
