"""Public shopping logs mapped to shopper events: tiny hand-made files, and the real samples if present."""

from __future__ import annotations

from pathlib import Path

import pytest

from intent.datasets import diginetica_events, rees46_events
from intent.events import event_from_dict
from intent.settings import Settings

DATA = Path(__file__).parent / "data"
SHARED = Settings().shared_data_dir


def test_diginetica_views_and_purchases_become_events_in_session_time_order() -> None:
    events = list(diginetica_events(DATA / "diginetica"))
    parsed = [event_from_dict(e) for e in events]
    assert [(e.event_type, e.product_id or e.products[0], e.category) for e in parsed] == [
        ("Product Viewed", "1002", "diginetica:11"),  # 1 s into session 7, before the 5 s view
        ("Product Viewed", "1001", "diginetica:11"),
        ("Product Viewed", "1003", "diginetica:12"),
        ("Product Viewed", "1004", None),  # an item without a category row
        ("Order Completed", "1004", None),
    ]
    assert parsed[0].anonymous_id == "diginetica-session-7" and parsed[0].user_id is None
    assert parsed[2].user_id == "diginetica-user-42" and parsed[2].session_id == "diginetica-8"
    assert parsed[3].timestamp - parsed[2].timestamp == 65.0
    assert parsed[0].price is None  # DIGINETICA has no prices; none are invented


def test_rees46_rows_become_segment_events() -> None:
    parsed = [event_from_dict(e) for e in rees46_events(DATA / "rees46" / "events.csv")]
    assert [e.event_type for e in parsed] == ["Product Viewed", "Product Added", "Order Completed", "Product Viewed"]
    assert parsed[0].category == "appliances.kitchen.kettle" and parsed[0].brand == "acme" and parsed[0].price == 19.99
    assert parsed[2].products == ("501",)
    assert parsed[3].category == "rees46:2099"
    assert parsed[1].timestamp - parsed[0].timestamp == 30.0 and parsed[0].session_id == "sess-a"


@pytest.mark.skipif(not (SHARED / "diginetica").is_dir(), reason=f"the DIGINETICA sample is not at {SHARED}")
def test_the_whole_diginetica_sample_maps_to_valid_events() -> None:
    folder = SHARED / "diginetica"
    events = [event_from_dict(e) for e in diginetica_events(folder)]
    views = len((folder / "train-item-views.sample.csv").read_text().splitlines()) - 1
    purchases = len((folder / "train-purchases.sample.csv").read_text().splitlines()) - 1
    assert sum(e.event_type == "Product Viewed" for e in events) == views
    assert sum(e.event_type == "Order Completed" for e in events) <= purchases  # only of viewed sessions
    assert all(e.category for e in events if e.event_type == "Product Viewed")


@pytest.mark.skipif(not (SHARED / "rees46").is_dir(), reason=f"the REES46 sample is not at {SHARED}")
def test_the_whole_rees46_sample_maps_to_valid_events() -> None:
    events = [event_from_dict(e) for e in rees46_events(SHARED / "rees46")]
    assert len(events) > 900
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
