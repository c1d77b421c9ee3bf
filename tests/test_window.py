"""Windows: what a window keeps, and its stored form."""

from __future__ import annotations

import numpy as np
import pytest

from intent.events import ShopperEvent
from intent.window import Window, WindowPolicy, compact

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
