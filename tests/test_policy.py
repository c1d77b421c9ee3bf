"""Who gets told: consent for sensitive intents, the frequency cap, the holdout; payload size."""

from __future__ import annotations

import jsonschema
import orjson
import pytest

from intent.domain import load_domain
from intent.events import iso_time
from intent.model import IntentModel
from intent.observability import DELIVERIES_SUPPRESSED
from intent.policy import MAX_PAYLOAD_BYTES, DeliveryPolicy, webhook_payload
from intent.settings import REPO_DIR, Settings
from intent.stores import DictStore
from intent.suggest import CrowdCounts, MerchandisingRules, Suggester
from intent.taxonomy import DEMO_DOMAIN_DIR
from intent.tracking import IntentTracker
from intent.window import WindowPolicy
from training.simulate import Simulator, coffee_tea_cold_story, parse_shopper

POLICY = DeliveryPolicy(holdout_share=0.1, holdout_salt="s", cap_count=2, cap_seconds=3600)


def change(sensitive: bool, consent: bool | None, shopper: str = "ada") -> dict:
    return {
        "id": "ic_1",
        "shopper_id": shopper,
        "to_intent": {"id": "x", "sensitive": sensitive},
        "personalization_allowed": consent,
        "evidence": [{"message_id": str(i)} for i in range(5)],
    }


def suppressed(reason: str) -> float:
    return DELIVERIES_SUPPRESSED.labels(reason)._value.get()


def test_a_sensitive_intent_needs_explicit_consent_and_each_suppression_is_counted() -> None:
    before = {reason: suppressed(reason) for reason in ("sensitive_without_consent", "consent_refused")}
    assert POLICY.decide(change(True, None), None, 0).reason == "sensitive_without_consent"
    assert POLICY.decide(change(True, False), None, 0).reason == "consent_refused"
    assert POLICY.decide(change(True, True), None, 0).deliver
    assert suppressed("sensitive_without_consent") == before["sensitive_without_consent"] + 1
    assert suppressed("consent_refused") == before["consent_refused"] + 1


def test_other_intents_are_delivered_unless_consent_is_refused() -> None:
    assert POLICY.decide(change(False, None), None, 0).deliver
    assert POLICY.decide(change(False, True), None, 0).deliver
    assert POLICY.decide(change(False, False), None, 0).reason == "consent_refused"


def test_the_frequency_cap_limits_deliveries_per_shopper_per_period() -> None:
    caps = DictStore()  # one small value per shopper, as in the worker's table
    before = suppressed("frequency_cap")

    def deliver(shopper: str, at: float) -> str | None:
        decision = POLICY.decide(change(False, True, shopper), caps.get(shopper), at)
        if decision.deliver:
            assert decision.cap_state is not None
            caps.put(shopper, decision.cap_state, 0)
        return decision.reason

    outcomes = [deliver("ada", at) for at in (0, 10, 20, 30)]
    assert outcomes == [None, None, "frequency_cap", "frequency_cap"]  # cap_count=2 per hour
    assert deliver("grace", 40) is None  # the cap is per shopper
    assert deliver("ada", 3601) is None  # the first delivery left the period: room for one
    assert deliver("ada", 3602) == "frequency_cap"
    assert suppressed("frequency_cap") == before + 3


def test_the_holdout_is_deterministic_per_shopper_and_close_to_its_share() -> None:
    shoppers = [f"shopper-{n}" for n in range(20_000)]
    first = [POLICY.in_holdout(s) for s in shoppers]
    assert first == [POLICY.in_holdout(s) for s in shoppers]
    assert sum(first) / len(first) == pytest.approx(0.1, abs=0.01)
    other_salt = DeliveryPolicy(0.1, "t", 2, 3600)
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

    def keep(change: dict, window: list[dict]) -> dict:
        changes.append((change, list(window)))
        return change

    tracker = IntentTracker(
        IntentModel.load(Settings().model_dir), WindowPolicy(), DictStore(), DictStore(), enrich_change=keep
    )
    events = parse_shopper(coffee_tea_cold_story(Simulator(seed=0).world))
    tracker.process(events, [(0, offset) for offset in range(len(events))])
    assert any(change["to_intent"]["id"] == "cold_flu_care" for change, _ in changes)
    return changes


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
