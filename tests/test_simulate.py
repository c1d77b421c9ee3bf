from __future__ import annotations

import itertools

import numpy as np
import pytest

from intent.events import event_from_dict
from intent.features import Featurizer
from intent.simulate import SESSION_GAP_SECONDS, Regime, Simulator, coffee_tea_cold_story
from intent.taxonomy import Taxonomy
from training.simulate import bayes_filter, observations


def test_the_same_seed_gives_the_same_shoppers() -> None:
    first = Simulator(seed=5).shoppers(20)
    again = Simulator(seed=5).shoppers(20)
    other = Simulator(seed=6).shoppers(20)
    assert [s.events for s in first] == [s.events for s in again]
    assert [s.intents for s in first] == [s.intents for s in again]
    assert [s.events for s in first] != [s.events for s in other]


def test_a_shopper_does_not_depend_on_how_many_are_simulated() -> None:
    assert Simulator(seed=5).shoppers(3)[2].events == Simulator(seed=5).shoppers(30)[2].events


def test_every_event_is_valid_and_labelled_with_a_known_intent(taxonomy: Taxonomy) -> None:
    for shopper in Simulator(seed=1).shoppers(40):
        assert len(shopper.events) == len(shopper.intents) > 0
        assert set(shopper.intents) <= set(taxonomy.ids)
        parsed = [event_from_dict(event) for event in shopper.events]
        assert all(event.shopper_id == shopper.shopper_id for event in parsed)
        assert [e.timestamp for e in parsed] == sorted(e.timestamp for e in parsed)


def test_sessions_are_separated_by_the_inactivity_gap_the_stream_uses() -> None:
    for shopper in Simulator(seed=2).shoppers(40):
        parsed = [event_from_dict(event) for event in shopper.events]
        for before, after in itertools.pairwise(parsed):
            new_session = before.session_id != after.session_id
            assert (after.timestamp - before.timestamp > SESSION_GAP_SECONDS) == new_session


def test_anonymous_share_and_switch_rate_knobs_take_effect() -> None:
    calm = Simulator(seed=3, regime=Regime(anonymous_share=1.0)).shoppers(30)
    assert all(s.shopper_id.startswith("anon-") for s in calm)
    assert all(len({e["context"]["sessionId"] for e in s.events}) == 1 for s in calm)

    def switches(regime: Regime) -> int:
        return sum(
            sum(a != b for a, b in itertools.pairwise(s.intents)) for s in Simulator(seed=3, regime=regime).shoppers(60)
        )

    assert switches(Regime().scaled(4.0)) > 2 * switches(Regime())


def test_products_carry_the_category_their_intent_emits(taxonomy: Taxonomy) -> None:
    """With no noise, every product event's category belongs to its labelled intent."""
    shoppers = Simulator(seed=4, regime=Regime(noise=0.0)).shoppers(30)
    for shopper in shoppers:
        for event, intent in zip(shopper.events, shopper.intents, strict=True):
            category = event["properties"].get("category")
            if category is not None and intent != taxonomy.browsing_intent:
                assert category in taxonomy.get(intent).categories


def test_the_story_moves_from_coffee_to_cold_and_flu_through_tea() -> None:
    simulator = Simulator(seed=0)
    story = coffee_tea_cold_story(simulator.world)
    assert story.intents[0] == "coffee_ritual" and story.intents[-1] == "cold_flu_care"
    first_tea = story.intents.index("cold_flu_care")
    assert story.events[first_tea]["properties"]["query"] == "herbal tea"
    days = (event_from_dict(story.events[-1]).timestamp - event_from_dict(story.events[first_tea]).timestamp) / 86400
    assert 1 <= days <= 3


def test_the_bayes_filter_is_the_exact_posterior_on_a_tiny_case(featurizer: Featurizer) -> None:
    """Against brute-force enumeration of every latent path of a short sequence."""
    simulator = Simulator(seed=8)
    world = simulator.world
    shopper = next(s for s in simulator.shoppers(50) if len(s.events) >= 4)
    events = [event_from_dict(e) for e in shopper.events[:4]]
    categories, starts = observations(world, featurizer, events)
    posterior = bayes_filter(world, categories, starts, events[0].segment)

    regime = world.regime
    prior = world.segment_priors[events[0].segment]
    intents = len(prior)
    final = np.zeros(intents)
    for path in itertools.product(range(intents), repeat=4):
        probability = prior[path[0]]
        for t, z in enumerate(path):
            if t:
                switch = regime.session_switch if starts[t] else regime.event_switch
                stay = path[t - 1] == z
                probability *= (1 - switch) if stay else switch * world.transition[path[t - 1], z]
            if categories[t] >= 0:
                probability *= world.emission[z, categories[t]]
        final[path[-1]] += probability
    assert posterior[-1] == pytest.approx(final / final.sum(), abs=1e-12)
