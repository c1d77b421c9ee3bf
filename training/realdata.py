"""Train and judge a next-basket intent model on a retailer's own purchase log (The Complete Journey).

`python -m training all --dataset completejourney --out models/completejourney-gru` and
`python -m training evaluate --model models/completejourney-gru --dataset completejourney`.

Time split: training before `validation_from` (2017-09-01), validation in September, test from
`test_from` (2017-10-01). Everything tuned (epochs, the ranking's weights, the recency decay, the
detector) is tuned on validation, and a validation change is judged only by baskets before the test
date. The domain (taxonomy, category map, window policy) is read from its directory and frozen
before training; the model directory records it.

What is scored is what the worker serves: the model runs on windows cut where the worker's shopper
window would expire, the category ranking is `intent.history.category_scores` with the purchase
memory the window keeps, and the shifts come from replaying the log through `IntentTracker`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from intent.datasets.baskets import Basket, basket_events
from intent.detector import DetectorConfig, ShiftDetector
from intent.domain import Domain, load_domain
from intent.events import event_from_dict, normalise_category
from intent.features import Featurizer, build_vocabulary
from intent.history import PurchaseHistory, RankingWeights, category_scores
from intent.model import IntentModel
from intent.taxonomy import DOMAINS_DIR
from intent.tracking import IntentTracker
from training.export import export_model
from training.network import NextBasketGRU
from training.nextbasket import base_rate_within, evaluate_next_baskets, scored_baskets, utc_seconds
from training.purchases import NO_TARGET, PurchaseLog, build_purchase_log
from training.train import TrainConfig, next_basket_outputs, train_next_basket

CONFIRM_DAYS = 7.0
MODEL_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
DETECTOR_GRID = tuple(
    DetectorConfig(enter, confirm, 1.01, "lift", lift, rate)
    for enter in (0.1, 0.2, 0.3)
    for confirm in (1, 3)
    for lift in (3.0, 5.0, 8.0)
    for rate in (0.005, 0.02)
)
MAX_CHANGES_PER_HOUSEHOLD_WEEK = 1.0


@dataclass(frozen=True)
class Split:
    validation_from: date
    test_from: date

    @property
    def validation_seconds(self) -> float:
        return utc_seconds(self.validation_from)

    @property
    def test_seconds(self) -> float:
        return utc_seconds(self.test_from)


@dataclass
class ServedOutputs:
    """For every basket, what the worker would hold just before it: the model's intent and category
    probabilities after the previous basket (None when the window had expired or there was none)."""

    intents: dict[str, np.ndarray]
    categories: dict[str, np.ndarray]


def served_outputs(log: PurchaseLog, outputs: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> ServedOutputs:
    """Pick, for each basket, the model's outputs at the last event before it in the same window."""
    intents: dict[str, np.ndarray] = {}
    categories: dict[str, np.ndarray] = {}
    for sequence, (intent_p, category_p) in zip(log.sequences, outputs, strict=True):
        following = sequence.next_basket
        basket_of_event = sequence.basket_of_event
        # the last event of a basket whose next basket continues this window
        ends = np.nonzero((following != NO_TARGET) & (np.r_[basket_of_event[1:], -2] == following))[0]
        for position in ends:
            basket_id = log.baskets[following[position]].basket_id
            intents[basket_id] = intent_p[position]
            if category_p is not None:
                categories[basket_id] = category_p[position]
    return ServedOutputs(intents, categories)


def histories_before(baskets: Sequence[Basket], window_days: float, decay: float) -> dict[str, PurchaseHistory]:
    """The purchase memory the worker's window holds just before each basket (forgotten with the
    window when the household stayed away longer than it lasts)."""
    span = window_days * 86400
    last_seen: dict[str, float] = {}
    memory: dict[str, PurchaseHistory] = {}
    before: dict[str, PurchaseHistory] = {}
    for basket in baskets:
        household = basket.shopper_id
        if household in last_seen and basket.timestamp - last_seen[household] > span:
            memory.pop(household, None)
        history = memory.setdefault(household, PurchaseHistory())
        before[basket.basket_id] = PurchaseHistory(dict(history.counts))
        history.add_basket(map(normalise_category, basket.categories), decay)
        last_seen[household] = basket.timestamp + len(basket.items)
    return before


def ranking_rows(
    scored: Sequence[Basket],
    served: ServedOutputs,
    histories: dict[str, PurchaseHistory],
    categories: Sequence[str],
    popularity: np.ndarray,
    weights: RankingWeights,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The served ranking (`model`) and the same ranking without the model's term (`model_ablation`)."""
    with_model, without = {}, {}
    for basket in scored:
        history = histories[basket.basket_id]
        probabilities = served.categories.get(basket.basket_id)
        without[basket.basket_id] = category_scores(history, categories, popularity, weights, None)
        with_model[basket.basket_id] = category_scores(history, categories, popularity, weights, probabilities)
    return with_model, without


def intent_rows(
    scored: Sequence[Basket], served: ServedOutputs, intent_popularity: np.ndarray
) -> dict[str, np.ndarray]:
    """The model's next-basket intent probabilities; an expired window falls back to popularity."""
    return {basket.basket_id: served.intents.get(basket.basket_id, intent_popularity) for basket in scored}


@dataclass
class Change:
    shopper_id: str
    intent: str
    timestamp: float
    basket_id: str  # the triggering basket (its visit)


def detector_changes(
    log: PurchaseLog,
    outputs: Sequence[tuple[np.ndarray, np.ndarray | None]],
    config: DetectorConfig,
    browsing: int,
    since: float,
    until: float,
) -> list[Change]:
    """The changes the stream's detector makes on the model's outputs (windows as served), with the
    event that made each, kept when it falls in [since, until)."""
    detector = ShiftDetector(config, browsing)
    changes = []
    for sequence, (intent_p, _) in zip(log.sequences, outputs, strict=True):
        basket_of_event = sequence.basket_of_event
        times = np.array([log.baskets[b].timestamp for b in basket_of_event])
        if times[-1] < since - 120 * 86400:
            continue  # a window over long before the period: its detector state cannot reach it
        for event_at, shift in detector.run(intent_p):
            basket = log.baskets[basket_of_event[event_at]]
            if since <= basket.timestamp < until:
                changes.append(
                    Change(basket.shopper_id, log.intents[shift.to_intent], basket.timestamp, basket.basket_id)
                )
    return changes


def confirmation(
    changes: Sequence[Change],
    baskets_by_household: dict[str, list[Basket]],
    intents_of_basket: dict[str, frozenset[str]],
    households_weeks: float,
) -> dict[str, Any]:
    """Precision (a later basket within 7 days holds the new intent; the triggering basket does not
    count), lift over the household's own 7-day rate for that intent (micro-averaged), counts."""
    confirmed = 0
    expected = 0.0
    base_rates: dict[tuple[str, str], float] = {}
    for change in changes:
        household = baskets_by_household[change.shopper_id]
        trigger = next(b for b in household if b.basket_id == change.basket_id)
        later = [
            b
            for b in household
            if b.timestamp > trigger.timestamp and b.timestamp - trigger.timestamp <= CONFIRM_DAYS * 86400
        ]
        confirmed += any(change.intent in intents_of_basket[b.basket_id] for b in later)
        key = (change.shopper_id, change.intent)
        if key not in base_rates:
            base_rates[key] = base_rate_within(
                household, lambda b, intent=change.intent: intent in intents_of_basket[b.basket_id], CONFIRM_DAYS
            )
        expected += base_rates[key]
    return {
        "changes": len(changes),
        "confirmed": confirmed,
        "precision": confirmed / len(changes) if changes else 0.0,
        "expected_by_own_rate": round(expected, 2),
        "lift": confirmed / expected if expected else 0.0,
        "changes_per_household_week": len(changes) / households_weeks if households_weeks else 0.0,
    }


def household_weeks(baskets: Sequence[Basket], since: float, until: float) -> float:
    """Household-weeks of [since, until): each household counts from the later of its first basket
    and `since` (a household that had not yet started shopping could not have been told anything)."""
    first: dict[str, float] = {}
    for basket in baskets:
        if basket.timestamp < until:
            first.setdefault(basket.shopper_id, basket.timestamp)
    return sum((until - max(start, since)) / (7 * 86400) for start in first.values())


def replay_through_tracker(
    model: IntentModel, domain: Domain, baskets: Sequence[Basket], batch_events: int = 500
) -> tuple[list[dict[str, Any]], float]:
    """Every basket as the stream's events through `IntentTracker` (dict stores, the domain's window
    policy, expiry swept as the worker does); returns the IntentChanged events and events per second."""
    sessions: dict[str, bytes] = {}
    shoppers: dict[str, bytes] = {}
    clock = {"now": 0.0}
    tracker = IntentTracker(model, domain.window_policy, _Store(sessions), _Store(shoppers), clock=lambda: clock["now"])
    changes: list[dict[str, Any]] = []
    batch = []
    swept_at = 0.0
    started = time.perf_counter()
    count = 0
    for basket in baskets:
        for raw in basket_events(basket):
            batch.append(event_from_dict(raw))
        if len(batch) >= batch_events:
            clock["now"] = batch[-1].timestamp  # the replay's clock is its event time
            changes.extend(tracker.process(batch))
            tracker.save()
            count += len(batch)
            batch = []
            if clock["now"] - swept_at > 3600:
                tracker.expire()
                swept_at = clock["now"]
    if batch:
        changes.extend(tracker.process(batch))
        tracker.save()
        count += len(batch)
    return changes, count / (time.perf_counter() - started)


class _Store:
    """A dict as the tracker's key-value store (partitions ignored: one process)."""

    def __init__(self, data: dict[str, bytes]) -> None:
        self.data = data

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes, partition: int) -> None:
        del partition
        self.data[key] = value

    def delete(self, key: str, partition: int) -> None:
        del partition
        self.data.pop(key, None)

    def items(self) -> list[tuple[str, bytes]]:
        return list(self.data.items())


def featurizer_categories(domain: Domain) -> tuple[str, ...]:
    """The category head's vocabulary: every category the domain's map names, normalised, sorted."""
    return tuple(sorted(domain.category_map.exact))


def baskets_by_household(baskets: Sequence[Basket]) -> dict[str, list[Basket]]:
    grouped: dict[str, list[Basket]] = defaultdict(list)
    for basket in baskets:
        grouped[basket.shopper_id].append(basket)
    return grouped


DEFAULT_SPLIT = Split(date(2017, 9, 1), date(2017, 10, 1))


def load_dataset(dataset: str) -> tuple[Domain, list[Basket]]:
    """The dataset's shipped domain and its baskets, categories normalised as events carry them."""
    if dataset != "completejourney":
        raise ValueError(f"unknown dataset {dataset!r}: completejourney is the one shipped")
    from intent.datasets.completejourney import completejourney_baskets

    domain = load_domain(DOMAINS_DIR / dataset)
    baskets = [_normalised(basket) for basket in completejourney_baskets()]
    return domain, baskets


def _normalised(basket: Basket) -> Basket:
    items = tuple(
        item if item.category is None else replace(item, category=normalise_category(item.category))
        for item in basket.items
    )
    return replace(basket, items=items)


def purchase_log(
    featurizer: Featurizer, categories: Sequence[str], domain: Domain, baskets: Sequence[Basket]
) -> PurchaseLog:
    return build_purchase_log(
        baskets,
        featurizer,
        categories,
        domain.taxonomy.ids,
        domain.category_map.intent_of,
        domain.window_policy.shopper_days,
    )


def popularity_before(log: PurchaseLog, before: float) -> tuple[np.ndarray, np.ndarray]:
    """Share of baskets holding each category, and each intent, before `before`."""
    held = np.array([basket.timestamp < before for basket in log.baskets])
    count = max(1, int(held.sum()))
    return log.category_targets[held].sum(0) / count, log.intent_targets[held].sum(0) / count


def train_purchase_model(
    dataset: str, out_dir: Path, split: Split, config: TrainConfig, progress: bool
) -> dict[str, Any]:
    """Train on the log before `split.validation_from`, tune on validation, export; returns metadata."""
    started = time.perf_counter()
    domain, baskets = load_dataset(dataset)
    categories = tuple(sorted(domain.category_map.exact))
    segments = sorted({b.segment for b in baskets if b.segment and b.timestamp < split.validation_seconds})
    featurizer = Featurizer(build_vocabulary((), segments, extra_categories=categories))
    log = purchase_log(featurizer, categories, domain, baskets)
    print(
        f"{len(log.baskets):,} baskets, {len(log.sequences):,} windows, "
        f"{sum(len(s.features) for s in log.sequences):,} events ({time.perf_counter() - started:.0f} s)"
    )
    times = np.array([basket.timestamp for basket in log.baskets])
    features = [sequence.features for sequence in log.sequences]
    # a target only where the next basket is before validation: nothing later teaches the model
    train_targets = [
        np.where(
            (s.next_basket >= 0) & (times[np.maximum(s.next_basket, 0)] < split.validation_seconds),
            s.next_basket,
            NO_TARGET,
        )
        for s in log.sequences
    ]
    validation = [b for b in scored_baskets(log.baskets, split.validation_from, split.test_from, "validation")]

    def validation_recall(model: Any) -> float:
        served = served_outputs(log, list(zip(*next_basket_outputs(model, features), strict=True)))
        recalls = []
        for basket in validation:
            probabilities = served.categories.get(basket.basket_id)
            if probabilities is None:
                continue
            truth = log.category_targets[position[basket.basket_id]]
            top = np.argsort(-probabilities)[:10]
            recalls.append(truth[top].sum() / min(truth.sum(), 10))
        return float(np.mean(recalls))

    position = log.basket_position()
    model = NextBasketGRU(featurizer.cardinalities, len(domain.taxonomy.ids), len(categories), config.hidden_size)
    result = train_next_basket(
        model, features, train_targets, log.intent_targets, log.category_targets, validation_recall, config, progress
    )
    outputs = list(zip(*next_basket_outputs(model, features), strict=True))
    category_popularity, intent_popularity = popularity_before(log, split.validation_seconds)
    weights, ranking_figures = tune_ranking(log, outputs, split, domain, category_popularity)
    detector, detector_figures = tune_detector(log, outputs, split, domain)
    training_summary: dict[str, Any] = {
        "source": f"{dataset}: {len(log.baskets):,} baskets of {len({b.shopper_id for b in log.baskets}):,} households",
        "dataset": dataset,
        "validation_from": split.validation_from.isoformat(),
        "test_from": split.test_from.isoformat(),
        "seed": config.seed,
        "epochs": config.epochs,
        "best_epoch": result.best_epoch,
        "validation_category_recall_at_10": [round(a, 4) for a in result.validation_accuracy],
        "seconds": round(result.seconds, 1),
        "threads": config.threads,
        "intent_shares": [round(float(x), 5) for x in intent_popularity],
        "ranking_validation": ranking_figures,
        "detector_validation": detector_figures,
    }
    metadata = export_model(
        model,
        out_dir,
        name=out_dir.name,
        domain_name=domain.name,
        taxonomy=domain.taxonomy,
        vocabulary=featurizer.vocabulary,
        detector=detector,
        training_summary=training_summary,
        parity_sequences=[f[:600] for f in features[:64]],
        category_head=categories,
        serving={
            "ranking": weights.to_json(),
            "category_popularity": [round(float(x), 6) for x in category_popularity],
        },
    )
    print(f"exported {metadata['model_version']} in {time.perf_counter() - started:.0f} s")
    return metadata


def tune_ranking(
    log: PurchaseLog,
    outputs: Sequence[tuple[np.ndarray, np.ndarray | None]],
    split: Split,
    domain: Domain,
    popularity: np.ndarray,
) -> tuple[RankingWeights, dict[str, Any]]:
    """The recency decay (as the evaluator chooses it) and the model's weight, on validation."""
    served = served_outputs(log, outputs)
    scored = scored_baskets(log.baskets, split.validation_from, split.test_from, "validation")
    rows: dict[str, dict[str, np.ndarray]] = {}
    decay = 0.98
    for weight in MODEL_WEIGHTS:
        weights = RankingWeights(decay, 0.3, weight)
        histories = histories_before(log.baskets, domain.window_policy.shopper_days, decay)
        rows[f"w={weight}"], _ = ranking_rows(scored, served, histories, log.categories, popularity, weights)
    figures = evaluate_next_baskets(
        log.baskets,
        log.categories,
        domain.category_map.intent_of,
        domain.taxonomy.ids,
        split.validation_from,
        split.test_from,
        period="validation",
        extra_category_rows=rows,
        draws=10,
    )
    recall = figures["category_recall_at_10"]
    best = max(MODEL_WEIGHTS, key=lambda weight: recall[f"w={weight}"])
    chosen_decay = float(figures["recency_decay"]["categories"])
    return RankingWeights(chosen_decay if chosen_decay == decay else decay, 0.3, best), {
        "category_recall_at_10_by_model_weight": {str(w): recall[f"w={w}"] for w in MODEL_WEIGHTS},
        "recency_decay_chosen_by_the_evaluator": chosen_decay,
    }


def tune_detector(
    log: PurchaseLog, outputs: Sequence[tuple[np.ndarray, np.ndarray | None]], split: Split, domain: Domain
) -> tuple[DetectorConfig, dict[str, Any]]:
    """The lift detector with the best confirmation lift on validation among the settings that make
    at most one change per household-week; a change is judged only by baskets before the test date."""
    since = split.validation_seconds
    until = split.test_seconds - CONFIRM_DAYS * 86400
    grouped = baskets_by_household(log.baskets)
    intents_of_basket = basket_intents(log)
    weeks = household_weeks(log.baskets, since, until)
    browsing = domain.taxonomy.index(domain.taxonomy.browsing_intent)
    tried = []
    for config in DETECTOR_GRID:
        changes = detector_changes(log, outputs, config, browsing, since, until)
        figures = confirmation(changes, grouped, intents_of_basket, weeks)
        tried.append((config, figures))
    allowed = [
        (config, figures)
        for config, figures in tried
        if figures["changes_per_household_week"] <= MAX_CHANGES_PER_HOUSEHOLD_WEEK and figures["changes"] >= 100
    ] or tried
    config, figures = max(allowed, key=lambda pair: pair[1]["lift"])
    return config, {"chosen": figures, "settings_tried": len(tried)}


def basket_intents(log: PurchaseLog) -> dict[str, frozenset[str]]:
    return {
        basket.basket_id: frozenset(log.intents[i] for i in np.nonzero(log.intent_targets[position])[0])
        for position, basket in enumerate(log.baskets)
    }
