"""Public shopping logs mapped to shopper events: tiny hand-made files in each dataset's exact
format (tests/data/), and the real samples in INTENT_SHARED_DATA_DIR when that folder is present."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest

from intent.datasets import (
    INSTACART_AISLE_CATEGORIES,
    INSTACART_NAME_RULES,
    DatasetError,
    dataset_events,
    diginetica_events,
    instacart_category,
    instacart_events,
    rees46_events,
)
from intent.events import ShopperEvent, event_from_dict, iso_time
from intent.settings import Settings
from intent.taxonomy import load_catalogue

DATA = Path(__file__).parent / "data"
SHARED = Settings().shared_data_dir


def parsed(events: Iterator[dict[str, Any]]) -> list[ShopperEvent]:
    return [event_from_dict(event) for event in events]


def rows(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))


def needs_sample(folder: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not (SHARED / folder).is_dir(),
        reason=f"the {folder} sample is not at {SHARED / folder} (set INTENT_SHARED_DATA_DIR)",
    )


# DIGINETICA on hand-made files ----------------------------------------------------------------


def test_diginetica_views_and_orders_come_session_by_session_in_time_order() -> None:
    events = parsed(diginetica_events(DATA / "diginetica"))
    assert [(e.session_id, e.event_type, e.product_id or e.products) for e in events] == [
        ("diginetica-7", "Product Viewed", "1002"),  # 1 s into session 7, before the 5 s view
        ("diginetica-7", "Product Viewed", "1001"),
        ("diginetica-8", "Product Viewed", "1003"),
        ("diginetica-8", "Product Viewed", "1004"),
        ("diginetica-8", "Product Viewed", "1001"),
        ("diginetica-8", "Order Completed", ("1004", "1003")),  # the two rows of order 900
        ("diginetica-9", "Order Completed", ("1002",)),  # a session with a purchase and no views
    ]


def test_diginetica_time_is_the_sessions_first_day_plus_timeframe() -> None:
    events = parsed(diginetica_events(DATA / "diginetica"))
    times = [iso_time(e.timestamp) for e in events]
    assert times[2] == "2016-05-10T00:00:00.000Z"
    assert times[3] == "2016-05-10T00:01:05.000Z"
    assert times[4] == "2016-05-11T00:00:05.000Z"  # timeframe past midnight, eventdate the next day
    # The purchase row says 2016-05-12 and 2 days since the session started on 2016-05-10: it is
    # placed 2 days after the session's start, at the order's latest row, not 2 days after its date.
    assert times[5] == "2016-05-12T00:00:01.000Z"
    # Without views the start is the purchase day minus the whole days of its timeframe.
    assert times[6] == "2016-05-13T01:01:01.000Z"


def test_diginetica_categories_become_prefixed_ids_and_nothing_is_invented() -> None:
    events = parsed(diginetica_events(DATA / "diginetica"))
    assert [e.category for e in events[:5]] == [
        "diginetica:11",
        "diginetica:11",
        "diginetica:12",
        None,  # item 1004 has no category row
        "diginetica:11",
    ]
    assert all(e.price is None and e.brand is None for e in events)


def test_diginetica_anonymous_sessions_are_shoppers_and_known_users_keep_their_id() -> None:
    events = parsed(diginetica_events(DATA / "diginetica"))
    assert (events[0].anonymous_id, events[0].user_id) == ("diginetica-session-7", None)
    assert (events[2].anonymous_id, events[2].user_id) == ("diginetica-session-8", "diginetica-user-42")
    assert {e.shopper_id for e in events} == {"diginetica-session-7", "diginetica-user-42", "diginetica-session-9"}


def test_diginetica_refuses_a_views_file_whose_sessions_are_split(tmp_path: Path) -> None:
    (tmp_path / "product-categories.csv").write_text("itemId;categoryId\n1;2\n")
    (tmp_path / "train-item-views.csv").write_text(
        "session_id;user_id;item_id;timeframe;eventdate\n1;NA;1;0;2016-01-01\n2;NA;1;0;2016-01-01\n1;NA;1;9;2016-01-01\n"
    )
    with pytest.raises(DatasetError, match="session 1 are not together"):
        list(diginetica_events(tmp_path))


# REES46 on a hand-made file -------------------------------------------------------------------


def test_rees46_event_types_become_segment_events_with_brand_price_and_category() -> None:
    events = parsed(rees46_events(DATA / "rees46" / "events.csv"))
    assert [e.event_type for e in events] == [
        "Product Viewed",
        "Product Added",
        "Product Removed",
        "Order Completed",
        "Product Viewed",
    ]
    viewed = events[0]
    assert (viewed.product_id, viewed.category, viewed.brand, viewed.price) == (
        "501",
        "appliances.kitchen.kettle",
        "acme",
        19.99,
    )
    assert events[1].quantity == 1
    assert events[3].products == ("501",) and events[3].price is None  # an order's price is its revenue
    assert (events[4].category, events[4].brand) == ("rees46:2099", None)  # no category_code, no brand
    assert events[0].user_id == "rees46-user-77" and events[0].session_id == "sess-a"
    assert [iso_time(e.timestamp) for e in events[:2]] == ["2019-10-01T00:00:00.000Z", "2019-10-01T00:00:30.000Z"]


def test_rees46_folder_and_message_ids() -> None:
    events = list(rees46_events(DATA / "rees46"))
    assert [e["messageId"] for e in events] == [f"rees46-events-{row}" for row in range(5)]


# Instacart on hand-made files -----------------------------------------------------------------


def test_instacart_baskets_become_cart_adds_then_an_order_per_shopper_in_order_number() -> None:
    events = parsed(instacart_events(DATA / "instacart"))
    assert [(e.user_id, e.event_type, e.product_id or e.products) for e in events] == [
        # user 5's order 11 (order 20) comes before order 12 (order 30), whatever the file order,
        # and its lines in add_to_cart_order
        ("instacart-user-5", "Product Added", "1"),
        ("instacart-user-5", "Product Added", "2"),
        ("instacart-user-5", "Order Completed", ("1", "2")),
        ("instacart-user-5", "Product Added", "3"),
        ("instacart-user-5", "Product Added", "6"),
        ("instacart-user-5", "Order Completed", ("3", "6")),
        ("instacart-user-6", "Product Added", "5"),
        ("instacart-user-6", "Product Added", "4"),
        ("instacart-user-6", "Product Added", "7"),
        ("instacart-user-6", "Order Completed", ("5", "4", "7")),
        # order 50 (train set) has no basket here, and basket 99 belongs to no listed order
    ]
    assert events[0].session_id == "instacart-order-20" and events[0].product_name == "Dark Roast Whole Bean Coffee"


def test_instacart_times_are_synthesised_from_weekday_hour_and_days_since_prior() -> None:
    times = [iso_time(e.timestamp) for e in parsed(instacart_events(DATA / "instacart"))]
    assert times[:6] == [
        "2017-01-03T17:00:00.000Z",  # first listed order: dow 2 of the week of Sunday 2017-01-01, 17 h
        "2017-01-03T17:00:30.000Z",  # the next item 30 s later
        "2017-01-03T17:01:30.000Z",  # the order completes 60 s after the last item
        "2017-01-06T08:00:00.000Z",  # 3 days since the prior order, at 8 h
        "2017-01-06T08:00:30.000Z",
        "2017-01-06T08:01:30.000Z",
    ]
    assert times[6] == "2017-01-01T10:00:00.000Z"  # user 6: dow 0, 10 h


def test_instacart_aisles_map_to_our_categories_by_product_name_where_mixed() -> None:
    categories = [e.category for e in parsed(instacart_events(DATA / "instacart")) if e.event_type == "Product Added"]
    assert categories == [
        "coffee beans",
        "coffee pods",
        "mint tea",
        "antihistamines",
        "black tea",
        "soft drinks",  # a bottled iced tea is a drink
        "instacart:packaged cheese",  # no category of ours: kept, out of vocabulary
    ]


def test_every_instacart_mapping_names_a_category_of_our_catalogue() -> None:
    catalogue_categories = {product.category for product in load_catalogue()}
    mapped = set(INSTACART_AISLE_CATEGORIES.values()) | {c for _, _, c in INSTACART_NAME_RULES if c}
    assert mapped <= catalogue_categories, mapped - catalogue_categories


def test_instacart_category_rules_are_tried_before_the_aisle_default() -> None:
    assert instacart_category("paper goods", "Ultra Soft Bathroom Tissue") == "toilet paper"
    assert instacart_category("paper goods", "Facial Tissue Family Size") == "tissues"
    assert instacart_category("paper goods", "2-Ply Everyday Napkins") is None
    assert instacart_category("cold flu allergy", "NyQuil Severe Cold & Flu") == "cold & flu remedies"
    assert instacart_category("hot cereal pancake mixes", "Quick Cooking Steel Cut Oats") == "oatmeal"
    assert instacart_category("hot cereal pancake mixes", "Pancake & Waffle Mix") is None


def test_an_unknown_dataset_format_is_refused() -> None:
    with pytest.raises(DatasetError, match="unknown dataset format"):
        dataset_events("jsonl", DATA)


# The real samples -----------------------------------------------------------------------------


@needs_sample("diginetica")
def test_the_diginetica_sample_maps_every_row_in_session_order() -> None:
    folder = SHARED / "diginetica"
    events = parsed(dataset_events("diginetica", folder))
    views = rows(folder / "train-item-views.sample.csv", ";")
    purchases = rows(folder / "train-purchases.sample.csv", ";")

    assert sum(e.event_type == "Product Viewed" for e in events) == len(views)
    orders = [e for e in events if e.event_type == "Order Completed"]
    assert len(orders) == len({row["ordernumber"] for row in purchases})
    assert sum(len(e.products) for e in orders) == len(purchases)
    assert all(e.category and e.category.startswith("diginetica:") for e in events if e.event_type == "Product Viewed")
    assert len({e.message_id for e in events}) == len(events)

    sessions = [session for session, _ in groupby(e.session_id for e in events)]
    file_sessions = [f"diginetica-{session}" for session, _ in groupby(row["session_id"] for row in views)]
    assert sessions == file_sessions  # each session once, in the file's order
    for _, session_events in groupby(events, key=lambda e: e.session_id):
        times = [e.timestamp for e in session_events]
        assert times == sorted(times)


@needs_sample("rees46")
def test_the_rees46_sample_maps_every_row_in_time_order() -> None:
    file = SHARED / "rees46" / "2019-Oct-sample.csv"
    events = parsed(dataset_events("rees46", SHARED / "rees46"))
    file_rows = rows(file)
    assert len(events) == len(file_rows)
    names = {"view": "Product Viewed", "cart": "Product Added", "purchase": "Order Completed"}
    names["remove_from_cart"] = "Product Removed"
    assert Counter(e.event_type for e in events) == Counter(names[row["event_type"]] for row in file_rows)
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
    assert [e.product_id or e.products[0] for e in events] == [row["product_id"] for row in file_rows]


@needs_sample("instacart")
def test_the_instacart_sample_maps_every_basket_of_a_listed_order() -> None:
    folder = SHARED / "instacart"
    events = parsed(dataset_events("instacart", folder))
    listed = {row["order_id"] for row in rows(folder / "orders.csv")}
    lines = [row for row in rows(folder / "order_products__prior.csv") if row["order_id"] in listed]

    assert sum(e.event_type == "Product Added" for e in events) == len(lines)
    assert sum(e.event_type == "Order Completed" for e in events) == len({row["order_id"] for row in lines})
    assert len({e.message_id for e in events}) == len(events)
    shoppers = [shopper for shopper, _ in groupby(e.user_id for e in events)]
    assert len(shoppers) == len(set(shoppers))  # shopper by shopper
    for _, shopper_events in groupby(events, key=lambda e: e.user_id):
        times = [e.timestamp for e in shopper_events]
        assert times == sorted(times) and len(set(times)) == len(times)

    catalogue_categories = {product.category for product in load_catalogue()}
    added = [e for e in events if e.event_type == "Product Added"]
    ours = [e.category in catalogue_categories for e in added]
    unmapped = [e.category for e, is_ours in zip(added, ours, strict=True) if not is_ours]
    assert all(category and category.startswith("instacart:") for category in unmapped)
    assert sum(ours) > len(added) / 3  # groceries: many aisles have a category of ours
