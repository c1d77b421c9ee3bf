"""The shopper simulator: a documented generative model with a latent intent chain per shopper.

The generative process (every choice below is a knob of `Regime`):

1. A shopper is known (has a `userId`, many sessions over weeks) or anonymous (one session).
   Known shoppers may carry a marketing segment; the segment shifts the prior of the first intent.
2. The latent intent z_t is a Markov chain over the taxonomy's intents, stepped once per event.
   It switches with probability `session_switch` at the first event of a session and
   `event_switch` at any other event; on a switch the next intent is drawn from the transition
   matrix (`transition_matrix`): mostly uniform, with the stories the product cares about made
   likelier (a coffee drinker coming down with a cold, a party followed by cleaning, ...).
3. Each event's type follows the session's funnel (search, view, add, remove, cart, checkout,
   order) independently of the intent. Events that carry a product draw its category from the
   intent's category weights, or, with probability `noise` (and always for "browsing"), uniformly
   from all categories; the product is uniform within the category. Searches carry a query that
   the featurizer maps back to that very category.

Because the intent only ever shows through the category, and session starts are visible in the
time gaps, the forward algorithm over this chain (`training.simulate.bayes_filter`) is the
Bayes-optimal filter: the best accuracy any model can reach on this data. The regime is Markov, so
that reference is exact.

The simulator lives in the runtime because the demo and the load generator send its shoppers;
training scores and teaches with it from there.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from intent.events import ShopperEvent, event_from_dict, iso_time
from intent.features import Featurizer, Vocabulary, build_vocabulary, query_tokens
from intent.taxonomy import Product, Taxonomy, load_catalogue, load_taxonomy

SESSION_GAP_SECONDS = 1800.0  # the inactivity that ends a session, as the stream derives it
START_TIME = 1_767_225_600.0  # 2026-01-01T00:00:00Z: simulated time is fixed for reproducibility

# Switch targets made likelier than the rest: the stories the product exists for.
STORY_TRANSITIONS: dict[str, dict[str, float]] = {
    "coffee_ritual": {"cold_flu_care": 6.0, "tea_comfort": 2.0, "healthy_breakfast": 1.5},
    "tea_comfort": {"cold_flu_care": 4.0, "sleep_wellness": 2.0},
    "cold_flu_care": {"coffee_ritual": 3.0, "tea_comfort": 2.0, "allergy_relief": 1.5},
    "party_hosting": {"home_cleaning": 4.0, "gift_shopping": 1.5},
    "baby_care": {"home_cleaning": 2.0, "personal_care": 1.5},
    "fitness_nutrition": {"healthy_breakfast": 3.0},
    "healthy_breakfast": {"fitness_nutrition": 3.0, "coffee_ritual": 1.5},
    "dinner_tonight": {"party_hosting": 2.0, "budget_stockup": 1.5},
    "budget_stockup": {"home_cleaning": 2.0, "dinner_tonight": 2.0},
}
BROWSING_SWITCH_SHARE = 0.05  # of all switches, the share that goes to "no clear intent"
SEGMENT_PRIOR_SHARE = 0.5  # how much a segment shapes the first intent

DEVICES = ("mobile", "desktop", "tablet")
DEVICE_WEIGHTS = (0.6, 0.32, 0.08)
CHANNELS = ("web", "app", "email", "social")
CHANNEL_WEIGHTS = (0.55, 0.3, 0.08, 0.07)
TIMEZONES = ("Europe/London", "Europe/Berlin", "America/New_York", "America/Los_Angeles")


@dataclass(frozen=True)
class Regime:
    """Knobs of the generative process. The defaults are the regime the shipped model targets."""

    event_switch: float = 0.005  # P(intent switch) at an event inside a session
    session_switch: float = 0.12  # P(intent switch) at the first event of a session
    noise: float = 0.1  # share of product events off the current intent
    mean_session_events: float = 8.0
    mean_sessions: float = 12.0  # per known shopper
    mean_days_between_sessions: float = 1.5
    anonymous_share: float = 0.3
    segment_share: float = 0.6  # of known shoppers, those with a marketing segment

    def scaled(self, switch_rate: float) -> Regime:
        """The same regime with both switch probabilities multiplied by `switch_rate`."""
        return Regime(
            **{
                **self.__dict__,
                "event_switch": min(1.0, self.event_switch * switch_rate),
                "session_switch": min(1.0, self.session_switch * switch_rate),
            }
        )


@dataclass
class SimulatedShopper:
    shopper_id: str
    events: list[dict[str, Any]]  # in the product's JSON event format
    intents: list[str]  # the true latent intent at every event
    story: str | None = None


@dataclass
class World:
    """Everything the generative process needs, derived once from taxonomy and catalogue."""

    taxonomy: Taxonomy
    catalogue: tuple[Product, ...]
    regime: Regime
    categories: tuple[str, ...] = field(init=False)
    emission: np.ndarray = field(init=False)  # (intents, categories): P(category | intent)
    transition: np.ndarray = field(init=False)  # (intents, intents): P(next | switch from)
    segment_priors: dict[str | None, np.ndarray] = field(init=False)
    products_by_category: dict[str, list[Product]] = field(init=False)
    queries_by_category: dict[str, list[str]] = field(init=False)
    vocabulary: Vocabulary = field(init=False)

    def __post_init__(self) -> None:
        self.products_by_category = {}
        for product in self.catalogue:
            self.products_by_category.setdefault(product.category, []).append(product)
        self.categories = tuple(sorted(self.products_by_category))
        self.vocabulary = build_vocabulary(self.catalogue, self.taxonomy.segments)
        self.emission = emission_matrix(self.taxonomy, self.categories, self.regime.noise)
        self.transition = transition_matrix(self.taxonomy)
        self.segment_priors = segment_priors(self.taxonomy)
        self.queries_by_category = _round_trip_queries(self.vocabulary, self.products_by_category)


def emission_matrix(taxonomy: Taxonomy, categories: Sequence[str], noise: float) -> np.ndarray:
    uniform = np.full(len(categories), 1.0 / len(categories))
    rows = []
    for intent in taxonomy.intents:
        if not intent.categories:
            rows.append(uniform)
            continue
        on_intent = np.array([intent.categories.get(c, 0.0) for c in categories])
        rows.append((1 - noise) * on_intent / on_intent.sum() + noise * uniform)
    return np.stack(rows)


def transition_matrix(taxonomy: Taxonomy) -> np.ndarray:
    ids = taxonomy.ids
    browsing = taxonomy.index(taxonomy.browsing_intent)
    matrix = np.zeros((len(ids), len(ids)))
    for row, source in enumerate(ids):
        weights = np.ones(len(ids))
        for target, boost in STORY_TRANSITIONS.get(source, {}).items():
            weights[taxonomy.index(target)] = boost
        weights[row] = 0.0
        weights[browsing] = 0.0
        share = 0.0 if row == browsing else BROWSING_SWITCH_SHARE
        matrix[row] = (1 - share) * weights / weights.sum()
        matrix[row, browsing] += share
    return matrix


def segment_priors(taxonomy: Taxonomy) -> dict[str | None, np.ndarray]:
    """P(first intent | segment); None is a shopper without a segment."""
    base = np.full(len(taxonomy.ids), 1.0 / len(taxonomy.ids))
    priors: dict[str | None, np.ndarray] = {None: base}
    for segment, weights in taxonomy.segments.items():
        shaped = np.array([weights.get(i, 0.0) for i in taxonomy.ids])
        shaped = shaped / shaped.sum()
        priors[segment] = SEGMENT_PRIOR_SHARE * shaped + (1 - SEGMENT_PRIOR_SHARE) * base
    return priors


def _round_trip_queries(vocabulary: Vocabulary, products_by_category: dict[str, list[Product]]) -> dict[str, list[str]]:
    """Search phrases per category that the featurizer maps back to the same category.

    Keeping only those makes a search's category observable, which keeps the Bayes filter exact.
    """
    featurizer = Featurizer(vocabulary)
    queries = {}
    for category, products in products_by_category.items():
        candidates = [category, *(p.name for p in products)]
        phrases = [
            " ".join(query_tokens(text))
            for text in candidates
            if _search_category(featurizer, " ".join(query_tokens(text))) == category
        ]
        queries[category] = phrases
    return queries


def _search_category(featurizer: Featurizer, query: str) -> str | None:
    probe = ShopperEvent(
        message_id="probe",
        event_type="Products Searched",
        name="Products Searched",
        timestamp=0.0,
        anonymous_id="probe",
        query=query,
    )
    return featurizer.category_of(probe)


class Simulator:
    def __init__(
        self,
        seed: int,
        regime: Regime | None = None,
        taxonomy: Taxonomy | None = None,
        catalogue: tuple[Product, ...] | None = None,
    ) -> None:
        self.world = World(taxonomy or load_taxonomy(), catalogue or load_catalogue(), regime or Regime())
        self.seed = seed

    def shoppers(self, count: int) -> list[SimulatedShopper]:
        return [self._shopper(index) for index in range(count)]

    def _shopper(self, index: int) -> SimulatedShopper:
        # One generator per shopper: shopper i is the same whatever `count` is.
        rng = random.Random(f"{self.seed}:{index}")
        regime = self.world.regime
        taxonomy = self.world.taxonomy
        known = rng.random() >= regime.anonymous_share
        segment = None
        if known and rng.random() < regime.segment_share:
            segment = rng.choice(sorted(taxonomy.segments))
        sessions = 1 + _poisson(rng, regime.mean_sessions - 1) if known else 1
        shopper_id = f"user-{self.seed}-{index}" if known else f"anon-{self.seed}-{index}"
        device = rng.choices(DEVICES, DEVICE_WEIGHTS)[0]
        timezone = rng.choice(TIMEZONES)

        events: list[dict[str, Any]] = []
        intents: list[str] = []
        intent = _draw(rng, self.world.segment_priors[segment])
        clock = START_TIME + rng.uniform(0, 14 * 86400)
        for session in range(sessions):
            if session:
                clock += max(
                    SESSION_GAP_SECONDS + 300,
                    rng.expovariate(1 / (regime.mean_days_between_sessions * 86400)),
                )
            session_id = f"{shopper_id}-s{session}"
            channel = rng.choices(CHANNELS, CHANNEL_WEIGHTS)[0]
            funnel = _session_funnel(rng, 1 + _poisson(rng, regime.mean_session_events - 1))
            for position, event_type in enumerate(funnel):
                if events:
                    switch = regime.session_switch if position == 0 else regime.event_switch
                    if rng.random() < switch:
                        intent = _draw(rng, self.world.transition[intent])
                if position:
                    clock += min(900.0, max(2.0, rng.lognormvariate(3.4, 0.9)))
                events.append(
                    self._event(
                        rng,
                        event_type,
                        intent,
                        clock,
                        shopper_id,
                        known,
                        session_id,
                        segment,
                        device,
                        channel,
                        timezone,
                        events,
                    )
                )
                intents.append(taxonomy.ids[intent])
        return SimulatedShopper(shopper_id, events, intents)

    def _event(
        self,
        rng: random.Random,
        event_type: str,
        intent: int,
        clock: float,
        shopper_id: str,
        known: bool,
        session_id: str,
        segment: str | None,
        device: str,
        channel: str,
        timezone: str,
        history: list[dict[str, Any]],
    ) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        if event_type in ("Product Viewed", "Product Added", "Product Removed", "Products Searched"):
            category = self.world.categories[_draw(rng, self.world.emission[intent])]
            product = rng.choice(self.world.products_by_category[category])
            if event_type == "Products Searched":
                properties["query"] = rng.choice(self.world.queries_by_category[category])
            else:
                properties.update(_product_properties(product))
                if event_type != "Product Viewed":
                    properties["quantity"] = 1
        elif event_type == "Order Completed":
            session_added = [
                e["properties"]["product_id"]
                for e in history
                if e["context"]["sessionId"] == session_id and e["event"] == "Product Added"
            ]
            properties["order_id"] = f"order-{shopper_id}-{len(history)}"
            properties["products"] = [{"product_id": p, "quantity": 1} for p in session_added]
        context: dict[str, Any] = {
            "sessionId": session_id,
            "device": {"type": device},
            "channel": channel,
            "timezone": timezone,
            "locale": "en-GB",
            "consent": {"categoryPreferences": {"Personalization": True}},
        }
        if segment is not None:
            context["traits"] = {"segment": segment}
        event: dict[str, Any] = {
            "type": "track",
            "event": event_type,
            "messageId": f"{session_id}-e{len(history)}",
            "timestamp": iso_time(clock),
            "properties": properties,
            "context": context,
        }
        event["userId" if known else "anonymousId"] = shopper_id
        return event


def _product_properties(product: Product) -> dict[str, Any]:
    return {
        "product_id": product.product_id,
        "sku": product.sku,
        "name": product.name,
        "category": product.category,
        "brand": product.brand,
        "price": product.price,
    }


def _session_funnel(rng: random.Random, length: int) -> list[str]:
    """Event types of one session: browse, add some, and maybe check out at the end."""
    funnel = ["Products Searched" if rng.random() < 0.35 else "Product Viewed"]
    while len(funnel) < length:
        funnel.append(
            rng.choices(
                ("Product Viewed", "Products Searched", "Product Added", "Product Removed", "Cart Viewed"),
                (0.66, 0.1, 0.18, 0.03, 0.03),
            )[0]
        )
    if "Product Added" in funnel and rng.random() < 0.4:
        funnel += ["Checkout Started", "Order Completed"]
    return funnel


def _draw(rng: random.Random, probabilities: np.ndarray) -> int:
    return rng.choices(range(len(probabilities)), probabilities.tolist())[0]


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method: the means here are small.
    limit, count, product = np.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def coffee_tea_cold_story(world: World) -> SimulatedShopper:
    """The story the product exists for, scripted: a weekly coffee buyer who, over three days,
    turns to herbal and mint tea (coming down with a cold) and then to cold & flu care."""
    shopper_id = "story-coffee-tea-cold"
    products = {p.name: p for p in world.catalogue}
    events: list[dict[str, Any]] = []
    intents: list[str] = []
    monday = START_TIME + 4 * 86400 + 8 * 3600  # Monday 2026-01-05, 08:00 UTC
    weekly_coffee = [
        ("Products Searched", "coffee beans"),
        ("Product Viewed", "Espresso Roast Beans 1kg"),
        ("Product Viewed", "Lungo Pods x30"),
        ("Product Added", "Lungo Pods x30"),
        ("Product Viewed", "Oat Barista Milk 1L"),
        ("Checkout Started", None),
        ("Order Completed", None),
    ]
    sessions: list[tuple[float, str, list[tuple[str, str | None]]]] = [
        (monday + week * 7 * 86400, "coffee_ritual", weekly_coffee) for week in range(4)
    ]
    wednesday = monday + (3 * 7 + 2) * 86400 + 3 * 3600  # two days after the last coffee run
    sessions += [
        (
            wednesday,
            "cold_flu_care",
            [
                ("Products Searched", "herbal tea"),
                ("Product Viewed", "Lemon Ginger Tea x20"),
                ("Product Viewed", "Peppermint Tea x20"),
                ("Product Added", "Peppermint Tea x20"),
                ("Product Viewed", "Chamomile Tea x20"),
            ],
        ),
        (
            wednesday + 86400 + 9 * 3600,
            "cold_flu_care",
            [
                ("Product Viewed", "Moroccan Mint Green Tea x20"),
                ("Products Searched", "throat lozenges"),
                ("Product Viewed", "Honey Lemon Lozenges x36"),
                ("Product Viewed", "Day & Night Cold Capsules x16"),
                ("Product Added", "Day & Night Cold Capsules x16"),
            ],
        ),
    ]
    sessions.sort(key=lambda s: s[0])
    for number, (start, intent, script) in enumerate(sessions):
        session_id = f"{shopper_id}-s{number}"
        added: list[str] = []
        for position, (event_type, subject) in enumerate(script):
            properties: dict[str, Any] = {}
            if event_type == "Products Searched":
                properties["query"] = subject
            elif subject is not None:
                properties = _product_properties(products[subject])
                if event_type == "Product Added":
                    properties["quantity"] = 1
                    added.append(products[subject].product_id)
            elif event_type == "Order Completed":
                properties = {
                    "order_id": f"order-{session_id}",
                    "products": [{"product_id": p, "quantity": 1} for p in added],
                }
            events.append(
                {
                    "type": "track",
                    "event": event_type,
                    "userId": shopper_id,
                    "messageId": f"{session_id}-e{position}",
                    "timestamp": iso_time(start + 45 * position),
                    "properties": properties,
                    "context": {
                        "sessionId": session_id,
                        "device": {"type": "mobile"},
                        "channel": "app",
                        "timezone": "Europe/London",
                        "consent": {"categoryPreferences": {"Personalization": True}},
                        "traits": {"segment": "coffee lovers"},
                    },
                }
            )
            intents.append(intent)
    return SimulatedShopper(shopper_id, events, intents, story="coffee_tea_cold")


def parse_shopper(shopper: SimulatedShopper) -> list[ShopperEvent]:
    return [event_from_dict(event) for event in shopper.events]
