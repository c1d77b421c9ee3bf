"""Who gets told: consent for sensitive intents, the frequency cap, the holdout; payload size."""

from __future__ import annotations

import jsonschema
import orjson
import pytest

from intent.domain import load_domain
from intent.events import event_from_dict, iso_time
from intent.model import IntentModel
from intent.observability import DELIVERIES_SUPPRESSED, FREQUENCY_CAPS_REMOVED
from intent.policy import MAX_PAYLOAD_BYTES, CapEntry, DeliveryPolicy, webhook_payload
from intent.settings import REPO_DIR, Settings
from intent.simulate import Simulator, coffee_tea_cold_story, parse_shopper
from intent.stores import DictStore
from intent.suggest import CrowdCounts, MerchandisingRules, Suggester
from intent.taxonomy import DEMO_DOMAIN_DIR
from intent.tracking import IntentTracker
from intent.window import WindowPolicy

POLICY = DeliveryPolicy(holdout_share=0.1, holdout_salt="s", cap_count=2, cap_seconds=3600, cap_max_shoppers=1000)


def change(sensitive: bool, consent: bool | None, shopper: str = "ada", change_id: str = "ic_1") -> dict:
    return {
        "id": change_id,
        "shopper_id": shopper,
        "to_intent": {"id": "x", "sensitive": sensitive},
        "personalization_allowed": consent,
        "evidence": [{"message_id": str(i)} for i in range(5)],
    }


def suppressed(reason: str) -> float:
    return DELIVERIES_SUPPRESSED.labels(reason)._value.get()


def test_a_sensitive_intent_needs_explicit_consent_and_each_suppression_is_counted() -> None:
    before = {reason: suppressed(reason) for reason in ("sensitive_without_consent", "consent_refused")}
    assert POLICY.decide(change(True, None), DictStore(), 0, 0).reason == "sensitive_without_consent"
    assert POLICY.decide(change(True, False), DictStore(), 0, 0).reason == "consent_refused"
    assert POLICY.decide(change(True, True), DictStore(), 0, 0).deliver
    assert suppressed("sensitive_without_consent") == before["sensitive_without_consent"] + 1
    assert suppressed("consent_refused") == before["consent_refused"] + 1


def test_other_intents_are_delivered_unless_consent_is_refused() -> None:
    assert POLICY.decide(change(False, None), DictStore(), 0, 0).deliver
    assert POLICY.decide(change(False, True), DictStore(), 0, 0).deliver
    assert POLICY.decide(change(False, False), DictStore(), 0, 0).reason == "consent_refused"


def test_the_frequency_cap_limits_deliveries_per_shopper_per_period() -> None:
    caps = DictStore()  # one small value per shopper, as in the worker's table
    before = suppressed("frequency_cap")

    def deliver(shopper: str, at: float) -> str | None:
        return POLICY.decide(change(False, True, shopper, f"ic_{shopper}_{at}"), caps, at, 0).reason

    outcomes = [deliver("ada", at) for at in (0, 10, 20, 30)]
    assert outcomes == [None, None, "frequency_cap", "frequency_cap"]  # cap_count=2 per hour
    assert deliver("grace", 40) is None  # the cap is per shopper
    assert deliver("ada", 3601) is None  # the first delivery left the period: room for one
    assert deliver("ada", 3602) == "frequency_cap"
    assert suppressed("frequency_cap") == before + 3


def test_a_change_emitted_again_is_counted_once_by_the_frequency_cap() -> None:
    caps = DictStore()
    first = change(False, True, change_id="ic_first")
    assert POLICY.decide(first, caps, 0, 0).deliver
    # a redone batch emits the same change (same id) again: delivered again (receivers de-duplicate
    # on its webhook-id), but it leaves room for one more change in the period
    assert POLICY.decide(first, caps, 5, 0).deliver
    assert POLICY.decide(change(False, True, change_id="ic_second"), caps, 10, 0).deliver
    assert POLICY.decide(first, caps, 15, 0).deliver  # counted, even when the cap is reached
    assert POLICY.decide(change(False, True, change_id="ic_third"), caps, 20, 0).reason == "frequency_cap"


class TombstoneStore(DictStore):
    """The test store, remembering the changelog partition of each removal (where the tombstone goes)."""

    def __init__(self) -> None:
        super().__init__()
        self.tombstones: list[tuple[str, int]] = []

    def delete(self, key: str, partition: int) -> None:
        super().delete(key, partition)
        self.tombstones.append((key, partition))


def removed(reason: str) -> float:
    return FREQUENCY_CAPS_REMOVED.labels(reason)._value.get()


def test_cap_entries_expire_once_their_period_has_passed_in_their_partitions_event_time() -> None:
    caps = TombstoneStore()
    POLICY.decide(change(False, True, "ada", "ic_a"), caps, 1_000, partition=0)
    POLICY.decide(change(False, True, "grace", "ic_g"), caps, 4_000, partition=1)
    POLICY.decide(change(False, True, "alan", "ic_l"), caps, 4_700, partition=0)
    before = removed("expired")
    # partition 0's clock is at 4,700: ada's delivery (1,000) is more than an hour old
    assert POLICY.expire_caps(caps, now=10**10) == (1, 0)
    assert caps.tombstones == [("ada", 0)] and set(caps.data) == {"grace", "alan"}
    assert removed("expired") == before + 1
    # a replay of old events keeps its caps until wall-clock time says the period has passed too
    replaying = TombstoneStore()
    POLICY.decide(change(False, True, "ada", "ic_a"), replaying, 1_000, partition=0)
    POLICY.decide(change(False, True, "alan", "ic_l"), replaying, 4_700, partition=0)
    assert POLICY.expire_caps(replaying, now=4_000) == (0, 0) and set(replaying.data) == {"ada", "alan"}


def test_a_change_dated_in_the_future_does_not_expire_the_other_shoppers_caps() -> None:
    caps = TombstoneStore()
    POLICY.decide(change(False, True, "ada", "ic_a"), caps, 1_000, partition=0)
    POLICY.decide(change(False, True, "mallory", "ic_m"), caps, 10**10, partition=0)  # year 2286
    assert POLICY.expire_caps(caps, now=2_000) == (0, 0) and set(caps.data) == {"ada", "mallory"}


def test_past_the_bound_the_least_recently_told_shoppers_are_forgotten_first() -> None:
    bounded = DeliveryPolicy(0.1, "s", cap_count=2, cap_seconds=3600, cap_max_shoppers=3)
    caps = TombstoneStore()
    for number, shopper in enumerate(["s0", "s1", "s2", "s3", "s4"]):
        bounded.decide(change(False, True, shopper, f"ic_{shopper}"), caps, 100 + number, partition=number % 2)
    before = removed("evicted")
    assert bounded.expire_caps(caps, now=200) == (0, 2)
    assert sorted(caps.tombstones) == [("s0", 0), ("s1", 1)] and set(caps.data) == {"s2", "s3", "s4"}
    assert removed("evicted") == before + 2
    assert CapEntry.from_bytes(caps.data["s4"]).sent == [("ic_s4", 104)]


def test_the_holdout_is_deterministic_per_shopper_and_close_to_its_share() -> None:
    shoppers = [f"shopper-{n}" for n in range(20_000)]
    first = [POLICY.in_holdout(s) for s in shoppers]
    assert first == [POLICY.in_holdout(s) for s in shoppers]
    assert sum(first) / len(first) == pytest.approx(0.1, abs=0.01)
    other_salt = DeliveryPolicy(0.1, "t", 2, 3600, 1000)
    assert first != [other_salt.in_holdout(s) for s in shoppers]


def test_holdout_payloads_carry_the_flag_and_no_suggestions() -> None:
    payload = webhook_payload(change(False, True), [{"product_id": "P1"}], holdout=True)
    assert payload["holdout"] is True and payload["suggestions"] == []
    assert webhook_payload(change(False, True), [{"product_id": "P1"}], holdout=False)["suggestions"] == [
        {"product_id": "P1"}
    ]


@pytest.fixture(scope="module")
def story_changes(taxonomy, catalogue) -> list[tuple[dict, list[dict]]]:
    """The real tracker and shipped model on the coffee -> tea -> cold story: each IntentChanged
    with the window it was detected on."""
    changes: list[tuple[dict, list[dict]]] = []

    def keep(change: dict, window: list[dict], category_scores: dict | None) -> dict:
        assert category_scores is None  # the demo model ranks no categories
        changes.append((change, list(window)))
        return change

    tracker = IntentTracker(
        IntentModel.load(Settings().model_dir), WindowPolicy(), DictStore(), DictStore(), enrich_change=keep
    )
    events = parse_shopper(coffee_tea_cold_story(Simulator(seed=0).world))
    tracker.process(events, [(0, offset) for offset in range(len(events))])
    assert any(change["to_intent"]["id"] == "cold_flu_care" for change, _ in changes)
    return changes


def story_told_with(first_choice: bool) -> list[dict]:
    """The story's IntentChanged events when its first event states `first_choice` about
    personalization and every later one says nothing."""
    calls = coffee_tea_cold_story(Simulator(seed=0).world).events
    for call in calls:
        del call["context"]["consent"]
    calls[0]["context"]["consent"] = {"categoryPreferences": {"Personalization": first_choice}}
    tracker = IntentTracker(IntentModel.load(Settings().model_dir), WindowPolicy(), DictStore(), DictStore())
    changes = []
    for offset, call in enumerate(calls):  # one event a batch: the choice must survive the stored window
        changes += tracker.process([event_from_dict(call)], [(0, offset)])
        tracker.save()
    return changes


def test_a_refusal_holds_for_the_later_events_that_say_nothing_about_consent() -> None:
    changes = story_told_with(first_choice=False)
    assert {change["to_intent"]["id"] for change in changes} >= {"coffee_ritual", "cold_flu_care"}
    assert all(change["personalization_allowed"] is False for change in changes)
    decisions = [POLICY.decide(change, DictStore(), 0, 0) for change in changes]
    assert [decision.reason for decision in decisions] == ["consent_refused"] * len(changes)


def test_a_consent_holds_for_the_later_events_that_say_nothing_about_it() -> None:
    changes = story_told_with(first_choice=True)
    cold = next(change for change in changes if change["to_intent"]["id"] == "cold_flu_care")
    assert cold["to_intent"]["sensitive"] and cold["personalization_allowed"] is True
    assert POLICY.decide(cold, DictStore(), 0, 0).deliver


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = orjson.loads((REPO_DIR / "schemas" / "intent-changed.webhook.schema.json").read_bytes())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def story_suggester(taxonomy, catalogue, max_items: int = 5) -> Suggester:
    rules = MerchandisingRules.load(load_domain(DEMO_DOMAIN_DIR).merchandising_rules)
    return Suggester(taxonomy, catalogue, rules, CrowdCounts(3 * 86400), max_items)


def test_real_payloads_and_pings_match_the_published_schema(story_changes, validator, taxonomy, catalogue) -> None:
    suggester = story_suggester(taxonomy, catalogue)
    payloads = [
        webhook_payload(change, suggester.suggest(change["to_intent"]["id"], window, window[-1]["t"]), holdout)
        for change, window in story_changes
        for holdout in (False, True)
    ]
    cold = next(p for p in payloads if p["to_intent"]["id"] == "cold_flu_care" and not p["holdout"])
    assert cold["suggestions"][0]["product_id"] == "P0034"  # the cold-relief tea the story is about
    for payload in [*payloads, {"type": "intent.ping", "id": "ping_1", "sent_at": iso_time(0)}]:
        validator.validate(payload)
        assert len(orjson.dumps(payload)) <= MAX_PAYLOAD_BYTES


def test_an_oversized_real_payload_is_cut_deterministically_and_stays_valid(
    story_changes, validator, taxonomy, catalogue
) -> None:
    change, window = next((c, w) for c, w in story_changes if c["to_intent"]["id"] == "cold_flu_care")
    everything = story_suggester(taxonomy, catalogue, max_items=len(catalogue))
    # every intent's whole list: far more than 20 KB of real suggestions
    suggestions = [item for intent in taxonomy.ids for item in everything.suggest(intent, window, window[-1]["t"])]
    assert len(orjson.dumps(suggestions)) > 2 * MAX_PAYLOAD_BYTES
    payload = webhook_payload(change, suggestions, holdout=False)
    assert len(orjson.dumps(payload)) <= MAX_PAYLOAD_BYTES
    assert payload["evidence"] == change["evidence"][-1:]  # the latest event is kept as evidence
    assert 0 < len(payload["suggestions"]) < len(suggestions)
    assert payload["suggestions"] == suggestions[: len(payload["suggestions"])]  # the best ones stay
    assert webhook_payload(change, suggestions, holdout=False) == payload
    validator.validate(payload)


def test_the_schema_rejects_payloads_that_break_the_contract(story_changes, validator) -> None:
    change, _ = story_changes[0]
    good = webhook_payload(change, [], holdout=False)
    suggestion = {"product_id": "P1", "name": "n", "category": "c", "brand": "b", "price": 1.0, "score": 1.0}
    broken = [
        {**good, "holdout": True, "suggestions": [{**suggestion, "reasons": [{"code": "pinned", "text": "t"}]}]},
        {**good, "suggestions": [{**suggestion, "reasons": []}]},  # a suggestion always says why
        {key: value for key, value in good.items() if key != "holdout"},
        {**good, "to_intent": {key: v for key, v in good["to_intent"].items() if key != "sensitive"}},
        {**good, "detected_at": "yesterday"},
        {"type": "intent.ping", "id": "ping_1"},
    ]
    validator.validate(good)
    for payload in broken:
        assert not validator.is_valid(payload), payload
