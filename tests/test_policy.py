"""Who gets told: consent for sensitive intents, the frequency cap, the holdout; payload size."""

from __future__ import annotations

import orjson
import pytest

from intent.observability import DELIVERIES_SUPPRESSED
from intent.policy import MAX_PAYLOAD_BYTES, DeliveryPolicy, webhook_payload

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
    before = suppressed("sensitive_without_consent")
    assert POLICY.decide(change(True, None), None, 0).reason == "sensitive_without_consent"
    assert POLICY.decide(change(True, False), None, 0).reason == "consent_refused"
    assert POLICY.decide(change(True, True), None, 0).deliver
    assert POLICY.decide(change(False, None), None, 0).deliver
    assert suppressed("sensitive_without_consent") == before + 1


def test_the_frequency_cap_limits_deliveries_per_shopper_per_period() -> None:
    state = None
    outcomes = []
    for at in (0, 10, 20, 3700):
        decision = POLICY.decide(change(False, True), state, at)
        outcomes.append(decision.reason)
        state = decision.cap_state or state
    assert outcomes == [None, None, "frequency_cap", None]  # an hour later the cap has room again


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


def test_payloads_are_shortened_to_fit_20_kb() -> None:
    big = [{"product_id": f"P{n}", "reasons": [{"code": "c", "text": "x" * 400}]} for n in range(80)]
    payload = webhook_payload(change(False, True), big, holdout=False)
    assert len(orjson.dumps(payload)) <= MAX_PAYLOAD_BYTES
    assert len(payload["evidence"]) == 1 and payload["suggestions"] == big[: len(payload["suggestions"])]


def test_real_payloads_and_pings_match_the_published_schema(taxonomy, catalogue) -> None:
    import jsonschema

    from intent.events import iso_time
    from intent.model import IntentModel
    from intent.settings import REPO_DIR, Settings
    from intent.stores import DictStore
    from intent.suggest import CrowdCounts, MerchandisingRules, Suggester
    from intent.tracking import IntentTracker
    from intent.window import WindowPolicy
    from training.simulate import Simulator, coffee_tea_cold_story, parse_shopper

    settings = Settings()
    suggester = Suggester(taxonomy, catalogue, MerchandisingRules.load(settings.merchandising_rules), CrowdCounts(1e5))
    tracker = IntentTracker(
        IntentModel.load(settings.model_dir),
        WindowPolicy(),
        DictStore(),
        DictStore(),
        enrich_change=lambda change, window: webhook_payload(
            change, suggester.suggest(change["to_intent"]["id"], window, window[-1]["t"]), holdout=False
        ),
    )
    events = parse_shopper(coffee_tea_cold_story(Simulator(seed=0).world))
    payloads = tracker.process(events, [(0, i) for i in range(len(events))])
    schema = orjson.loads((REPO_DIR / "schemas" / "intent-changed.webhook.schema.json").read_bytes())
    validator = jsonschema.Draft202012Validator(schema)
    cold = next(p for p in payloads if p["to_intent"]["id"] == "cold_flu_care")
    assert cold["suggestions"][0]["product_id"] == "P0034"  # the cold-relief tea the story is about
    for payload in [*payloads, {"type": "intent.ping", "id": "ping_1", "sent_at": iso_time(0)}]:
        validator.validate(payload)
