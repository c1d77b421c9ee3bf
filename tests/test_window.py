"""Windows: what a window keeps, and its stored form."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from intent.events import ShopperEvent
from intent.window import EVIDENCE_EVENTS, Window, WindowPolicy, as_records, compact, expand

DAY = 86400.0
NOW = 1_767_600_000.0


def event(number: int, at: float, **fields: object) -> ShopperEvent:
    viewed = "Product Viewed"
    return ShopperEvent(message_id=f"m{number}", event_type=viewed, name=viewed, timestamp=at, user_id="ada", **fields)


def test_a_window_survives_its_stored_form_with_every_field() -> None:
    window = Window(session_id="s1", model_version="v1", last_event_time=NOW, last_seen=NOW + 1, partition=3)
    window.append(compact(event(1, NOW, product_id="P1", product_name="Tea\nwith a newline", price=2.5)))
    window.append(compact(event(2, NOW + 60, category="herbal tea")))
    window.set_hidden_state(np.arange(4, dtype=np.float32))
    window.detector, window.last_offset = [3, None, 0], 41
    restored = Window.from_bytes(window.to_bytes())
    assert restored == window
    assert restored.records()[0]["pn"] == "Tea\nwith a newline"
    assert np.array_equal(restored.hidden_state(), np.arange(4, dtype=np.float32))


def test_an_empty_window_survives_its_stored_form() -> None:
    assert Window.from_bytes(Window().to_bytes()) == Window()


@pytest.mark.parametrize("purchases", [None, {"coffee": [1.0, 2]}])
@pytest.mark.parametrize("consent", [None, False, True])
def test_the_optional_header_fields_survive_the_stored_form_in_any_combination(
    purchases: dict | None, consent: bool | None
) -> None:
    window = Window(partition=2, purchases=purchases, personalization_allowed=consent)
    window.append(compact(event(1, NOW)))
    assert Window.from_bytes(window.to_bytes()) == window


def test_windows_stored_before_the_optional_fields_existed_are_read_with_them_unset() -> None:
    before_purchases = b'["s1",null,[null,null,0],"v1",1.0,2.0,3,41]\n{"m":"m1","e":"Product Viewed","t":1.0}'
    before_consent = b'["s1",null,[null,null,0],"v1",1.0,2.0,3,41,{"coffee":[1.0,2]}]'
    old = Window.from_bytes(before_purchases)
    assert (old.partition, old.last_offset, old.purchases, old.personalization_allowed) == (3, 41, None, None)
    assert [record["m"] for record in old.records()] == ["m1"]
    newer = Window.from_bytes(before_consent)
    assert (newer.purchases, newer.personalization_allowed) == ({"coffee": [1.0, 2]}, None)


def test_tail_and_previous_timestamp_read_only_the_newest_records() -> None:
    window = Window()
    for number in range(5):
        window.append(compact(event(number, NOW + number, product_id=f"P{number}")))
    assert [record["p"] for record in window.tail(2)] == ["P3", "P4"]
    assert window.tail(0) == [] and len(window.tail(50)) == 5
    assert window.previous_timestamp() == NOW + 4
    assert Window().previous_timestamp() is None


@pytest.mark.parametrize(
    ("times", "kept"),
    [
        ([0, 1, 2, 3], [1, 2, 3]),  # over the count: the oldest goes
        ([-3 * DAY, -2.5 * DAY, 0, 1], [2, 3]),  # older than the span: gone, though within the count
        ([-3 * DAY, 0, -2.5 * DAY, 1], [1, 2, 3]),  # late events after a recent one stay in order
    ],
)
def test_a_shopper_window_keeps_its_last_events_within_its_days(times: list[float], kept: list[int]) -> None:
    policy = WindowPolicy(shopper_events=3, shopper_days=2.0)
    window = Window()
    for number, offset in enumerate(times):
        policy.add_to_shopper(window, event(number, NOW + offset), now=NOW)
    assert [record["m"] for record in window.records()] == [f"m{number}" for number in kept]


def test_a_window_written_by_the_previous_version_is_read_with_every_event_and_its_state() -> None:
    """Format 1 (a JSON header line, one JSON line per event) is what a worker upgraded from the
    previous version finds in its changelogs: nothing of it may be lost."""
    state = np.linspace(-1, 1, 4, dtype=np.float32)
    hidden = base64.b64encode(state.tobytes()).decode()
    header = orjson.dumps(["s1", hidden, [3, 2, 1, 0.5], "v1", NOW + 60, NOW + 61, 3, 41, {"coffee": [1.0, 2]}, True])
    viewed = {"m": "m1", "e": "Product Viewed", "t": NOW, "p": "P1", "pn": "Tea", "c": "tea", "b": "Kin", "pr": 2.5}
    viewed |= {"d": "mobile", "ch": "app", "tz": "Europe/London", "sg": "coffee lovers"}
    ordered = {"m": "m2", "e": "Order Completed", "t": NOW + 60, "ps": ["P1", "P2"], "d": "mobile"}
    searched = [{"m": f"q{n}", "e": "Products Searched", "t": NOW + 61 + n, "qy": "tea"} for n in range(4)]
    lines = [orjson.dumps(record) for record in [viewed, ordered, *searched]]
    old = Window.from_bytes(b"\n".join([header, *lines]))
    # as the current version keeps them: message ids and brands only for the evidence
    past_evidence = {key: value for key, value in viewed.items() if key not in ("m", "b")}
    assert old.records() == [past_evidence, ordered, *searched]
    assert np.array_equal(old.hidden_state(), state)
    assert (old.session_id, old.detector, old.model_version) == ("s1", [3, 2, 1, 0.5], "v1")
    assert (old.last_event_time, old.last_seen, old.partition, old.last_offset) == (NOW + 60, NOW + 61, 3, 41)
    assert (old.purchases, old.personalization_allowed) == ({"coffee": [1.0, 2]}, True)
    assert Window.from_bytes(old.to_bytes()) == old  # and stored again in the current format


def test_every_field_of_every_event_survives_the_stored_form() -> None:
    window = Window(partition=1)
    window.append(compact(event(1, NOW, product_id="P1", product_name="Tea", category="tea", price=2)))
    window.append(compact(event(2, NOW + 0.001, query="mint tea", device="mobile", timezone="Europe/Paris")))
    window.append(compact(event(3, NOW + 2.5, product_id="P1", product_name="Tea", category="tea", price=2)))
    window.append(compact(event(4, NOW + 9, products=("P1", "P2"), channel="email", segment="new parents")))
    window.append(compact(event(5, NOW + 9, brand="Kin", product_id="P2")))  # the same instant
    restored = Window.from_bytes(window.to_bytes())
    assert restored.records() == window.records()
    assert restored.records()[3] == {
        "m": "m4", "e": "Product Viewed", "t": NOW + 9, "ps": ["P1", "P2"], "ch": "email", "sg": "new parents"
    }  # fmt: skip
    assert [expand(record) for record in restored.records()] == [expand(record) for record in window.records()]


@pytest.mark.parametrize("timestamp", [NOW + 0.0001, NOW + 1 / 3, 1e-6, 253402300799.999])
def test_a_timestamp_finer_than_a_millisecond_is_stored_exactly(timestamp: float) -> None:
    window = Window()
    window.append(compact(event(1, NOW)))
    window.append(compact(event(2, timestamp)))
    assert [record["t"] for record in Window.from_bytes(window.to_bytes()).records()] == [NOW, timestamp]


def test_a_window_whose_events_are_not_read_is_stored_again_without_unpacking_them() -> None:
    window = Window(session_id="s1", last_seen=NOW)
    for number in range(3):
        window.append(compact(event(number, NOW + number, product_id=f"P{number}")))
    stored = window.to_bytes()
    restored = Window.from_bytes(stored)
    restored.last_seen = NOW + 5  # what a known shopper's visit changes: its clock, not its events
    again = Window.from_bytes(restored.to_bytes())
    assert restored._packed_events is not None  # stored as it was read
    assert again.last_seen == NOW + 5 and again.records() == window.records()


def test_a_window_of_an_unknown_format_is_refused_with_its_version() -> None:
    with pytest.raises(ValueError, match="format 9"):
        Window.from_bytes(bytes([9]) + Window().to_bytes()[1:])


def viewed_tea(number: int) -> ShopperEvent:
    return event(number, NOW + number, product_id=f"P{number}", product_name=f"Tea {number}", brand="Kin", price=2.0)


def test_an_event_keeps_its_message_id_and_brand_only_while_it_is_evidence() -> None:
    window = Window()
    for number in range(EVIDENCE_EVENTS + 2):
        window.append(compact(viewed_tea(number)))
    records = window.records()
    assert [record.get("m") for record in records] == [None, None, *(f"m{n}" for n in range(2, EVIDENCE_EVENTS + 2))]
    # what the model, suggestions and the read API's timeline read
    assert records[0] == {"e": "Product Viewed", "t": NOW, "p": "P0", "pn": "Tea 0", "pr": 2.0}
    assert records[2]["b"] == "Kin"


def test_the_events_a_reader_holds_do_not_change_when_the_window_takes_more() -> None:
    """The tracker holds a window's event list and length as a change's evidence while later events
    of the micro-batch join the window."""
    window = Window()
    for number in range(EVIDENCE_EVENTS):
        window.append(compact(viewed_tea(number)))
    held, length = window.events, len(window.events)
    before = as_records(held[:length])
    window.append(compact(viewed_tea(EVIDENCE_EVENTS)))  # the first event is no longer evidence
    assert as_records(held[:length]) == before and "m" not in window.records()[0]
