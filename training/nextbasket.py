"""Next-basket evaluation on a retailer's purchase log: every row (baselines and the caller's
model) scored on one protocol, one split, with bootstrap intervals over households.

Protocol (issue 9, point 4). Baskets are put in time order (timestamp, then basket id). A basket
is *scored* when it falls in the period (test: at or after `test_from`; validation: at or after
`validation_from` and before `test_from`), its household has an earlier basket, and it holds at
least one categorised item. Its history is every earlier basket of its household, scored period
included. Each row gives a score per category (and, separately, per intent) for a scored basket:

- `top_sellers`: the number of baskets holding the category before the period starts;
- `segment`: the same count over the baskets of the household's segment (age x household
  composition); only households with a segment have this row, and every row is also reported on
  those households (`segment_households`);
- `personal_frequency`: the number of the household's earlier baskets holding the category;
- `personal_recency`: the sum over earlier baskets holding it of decay ** (baskets ago, the last
  basket being 1 ago), plus POPULARITY_WEIGHT x the top-sellers count divided by its maximum; the
  decay is chosen on validation from RECENCY_DECAYS (its main metric, per space), never on test;
- `last_basket`: 1 for the categories of the household's last basket;
- any extra row the caller passes as precomputed score vectors (the model and its ablation).
A basket without categorised items still belongs to the history: it is a step of "baskets ago",
and when it is the last basket the `last_basket` row is popularity alone.

Ranking: highest score first; equal scores (and so the filling of short lists: every category a
household never bought scores 0) are ordered by *training-period* popularity (baskets before
`validation_from`), then by vocabulary order. The top-sellers row itself counts up to the start
of the scored period, so on test it also sees September; on validation both counts coincide.

Metrics: category recall@10 = |top 10 ∩ truth| / min(|truth|, 10); intent recall@5 and NDCG@5
(binary gains) over the basket's intents, those of its categories (unmapped ones dropped); the
intent rows are the same baselines computed on baskets read as sets of intents. *Explore*: each
row ranks only what the household has not bought in the EXPLORE_DAYS before the basket and is
scored on the basket's categories (intents) of that kind, over the baskets that have some.
Every figure is a mean over baskets with a percentile bootstrap interval over households
(households resampled with replacement, the same draws for every figure of a population).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

import numpy as np

from intent.datasets.baskets import Basket

Period = Literal["validation", "test"]
ScoreRows = Mapping[str, Mapping[str, np.ndarray]]  # row name -> basket_id -> one score per name

DAY_SECONDS = 86_400.0
CATEGORY_TOP = 10
INTENT_TOP = 5
EXPLORE_DAYS = 28.0
POPULARITY_WEIGHT = 0.3
RECENCY_DECAYS = (0.8, 0.9, 0.95, 0.98, 0.99)
BASELINE_ROWS = ("top_sellers", "segment", "personal_frequency", "personal_recency", "last_basket")
BOOTSTRAP_DRAWS = 1000
BOOTSTRAP_SEED = 20170901
CHUNK_BASKETS = 4096  # scored baskets ranked at a time: bounds memory whatever the log's size

CATEGORY_METRICS = ("category_recall_at_10", "explore_category_recall_at_10")
INTENT_METRICS = (
    "intent_recall_at_5",
    "intent_ndcg_at_5",
    "explore_intent_recall_at_5",
    "explore_intent_ndcg_at_5",
)
METRICS = CATEGORY_METRICS + INTENT_METRICS


# Small helpers for suggestions (d) and shifts (e) -----------------------------------------------


def intents_of(basket: Basket, intent_of: Callable[[str], str | None]) -> frozenset[str]:
    """The basket's intents: those of its categories, categories mapped to none left out."""
    return frozenset(intent for intent in map(intent_of, basket.categories) if intent is not None)


def bought_within(
    baskets_of_household: Sequence[Basket], after: float, days: float, holds: Callable[[Basket], bool]
) -> bool:
    """Whether a basket strictly after `after` and at most `days` later satisfies `holds`.

    `baskets_of_household` is in time order; a basket at `after` itself (the trigger) never counts.
    """
    start = bisect.bisect_right(baskets_of_household, after, key=_timestamp)
    end = bisect.bisect_right(baskets_of_household, after + days * DAY_SECONDS, key=_timestamp)
    return any(holds(basket) for basket in baskets_of_household[start:end])


def base_rate_within(
    baskets_of_household: Sequence[Basket], holds: Callable[[Basket], bool], days: float = 7.0
) -> float:
    """The share of the household's baskets followed within `days` by a later basket that `holds`:
    the household's own base rate for a shift to be confirmed by chance (the trigger excluded).

    `baskets_of_household` is in time order; NaN for a household without baskets.
    """
    if not baskets_of_household:
        return float("nan")
    followed = 0
    next_holding = float("inf")  # the earliest later time of a basket that holds
    index = len(baskets_of_household) - 1
    # Walk backwards a group of equal timestamps at a time, so a basket at the same moment as the
    # trigger is not "later" (as in bought_within).
    while index >= 0:
        moment = baskets_of_household[index].timestamp
        group_start = index
        while group_start > 0 and baskets_of_household[group_start - 1].timestamp == moment:
            group_start -= 1
        group = baskets_of_household[group_start : index + 1]
        if next_holding - moment <= days * DAY_SECONDS:
            followed += len(group)
        if any(holds(basket) for basket in group):
            next_holding = moment
        index = group_start - 1
    return followed / len(baskets_of_household)


def _timestamp(basket: Basket) -> float:
    return basket.timestamp


# The protocol -----------------------------------------------------------------------------------


def utc_seconds(day: date) -> float:
    """A date as UTC midnight (a naive datetime is read as UTC), in seconds since the epoch."""
    if isinstance(day, datetime):
        return (day if day.tzinfo else day.replace(tzinfo=UTC)).timestamp()
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def time_ordered(baskets: Iterable[Basket]) -> list[Basket]:
    """The log in the protocol's order (timestamp, then basket id); a repeated basket id is an error."""
    ordered = sorted(baskets, key=lambda basket: (basket.timestamp, basket.basket_id))
    seen: set[str] = set()
    for basket in ordered:
        if basket.basket_id in seen:
            raise ValueError(f"basket id {basket.basket_id!r} appears twice in the log")
        seen.add(basket.basket_id)
    return ordered


def scored_baskets(baskets: Iterable[Basket], validation_from: date, test_from: date, period: Period) -> list[Basket]:
    """The baskets the protocol scores in `period`, in time order: the ones extra rows must cover."""
    ordered = time_ordered(baskets)
    start, end = _period_bounds(utc_seconds(validation_from), utc_seconds(test_from), period)
    seen: set[str] = set()
    scored = []
    for basket in ordered:  # the same rule as _Log.scored, without a vocabulary
        if start <= basket.timestamp < end and basket.shopper_id in seen and basket.categories:
            scored.append(basket)
        seen.add(basket.shopper_id)
    return scored


def _period_bounds(validation_from: float, test_from: float, period: Period) -> tuple[float, float]:
    if validation_from >= test_from:
        raise ValueError("validation_from must come before test_from")
    if period == "test":
        return test_from, float("inf")
    if period == "validation":
        return validation_from, test_from
    raise ValueError(f"unknown period {period!r}: 'validation' or 'test'")


@dataclass(frozen=True)
class _Space:
    """Categories or intents: what a row scores, with each basket read as a set of indices."""

    metrics: tuple[str, ...]  # (recall, [ndcg,] explore recall, [explore ndcg])
    top: int
    size: int
    held: list[np.ndarray]  # per basket in time order: the indices it holds
    extra_rows: ScoreRows


@dataclass(frozen=True)
class _Snapshot:
    """What the protocol knows just before scored baskets, stacked for a chunk of them."""

    positions: np.ndarray  # indices into the time-ordered log
    frequency: np.ndarray  # (n, size) earlier baskets holding each index
    recency: np.ndarray  # (decays, n, size)
    last_basket: np.ndarray  # (n, size) bool
    recent: np.ndarray  # (n, size) bool: bought in the EXPLORE_DAYS before the basket
    truth: np.ndarray  # (n, size) bool


@dataclass(frozen=True)
class _Log:
    """The log in time order, encoded once for the walks."""

    baskets: list[Basket]
    timestamps: np.ndarray
    households: np.ndarray  # dense household number per basket
    segments: np.ndarray  # dense segment number per basket, -1 without a segment
    segment_count: int
    eligible: np.ndarray  # household has an earlier basket and the basket a categorised item
    validation_from: float
    test_from: float

    def scored(self, period: Period) -> np.ndarray:
        """Whether each basket is scored in `period`."""
        start, end = _period_bounds(self.validation_from, self.test_from, period)
        return self.eligible & (self.timestamps >= start) & (self.timestamps < end)


def _encode(
    baskets: Iterable[Basket],
    categories: Sequence[str],
    intent_of: Mapping[str, str | None] | Callable[[str], str | None],
    intents: Sequence[str],
    validation_from: date,
    test_from: date,
) -> tuple[_Log, list[np.ndarray], list[np.ndarray]]:
    """The encoded log and, per basket, the indices of its categories and of its intents."""
    lookup = intent_of.get if isinstance(intent_of, Mapping) else intent_of
    ordered = time_ordered(baskets)
    category_index = _vocabulary_index(categories, "category")
    intent_index = _vocabulary_index(intents, "intent")
    category_sets = [basket.categories for basket in ordered]
    unknown = sorted(set().union(*category_sets) - category_index.keys())
    if unknown:
        raise ValueError(f"{len(unknown)} basket categories are not in the vocabulary, e.g. {unknown[:5]}")
    intent_by_category = {category: lookup(category) for category in categories}
    strays = sorted({i for i in intent_by_category.values() if i is not None} - intent_index.keys())
    if strays:
        raise ValueError(f"the category map names intents outside the intent list: {strays}")

    def indices(names: Iterable[str | None], index: Mapping[str, int]) -> np.ndarray:
        return np.array(sorted({index[name] for name in names if name is not None}), dtype=np.int64)

    category_held = [indices(held, category_index) for held in category_sets]
    intent_held = [indices((intent_by_category[c] for c in held), intent_index) for held in category_sets]

    household_names = [basket.shopper_id for basket in ordered]
    segment_names = sorted({basket.segment for basket in ordered if basket.segment is not None})
    segment_of = {name: number for number, name in enumerate(segment_names)}
    has_earlier = np.zeros(len(ordered), dtype=bool)
    seen: set[str] = set()
    for position, name in enumerate(household_names):
        has_earlier[position] = name in seen
        seen.add(name)
    log = _Log(
        baskets=ordered,
        timestamps=np.array([basket.timestamp for basket in ordered], dtype=np.float64),
        households=np.unique(household_names, return_inverse=True)[1] if ordered else np.zeros(0, np.int64),
        segments=np.array([-1 if b.segment is None else segment_of[b.segment] for b in ordered], dtype=np.int64),
        segment_count=len(segment_names),
        eligible=has_earlier & np.array([len(held) > 0 for held in category_held], dtype=bool),
        validation_from=utc_seconds(validation_from),
        test_from=utc_seconds(test_from),
    )
    _period_bounds(log.validation_from, log.test_from, "test")  # the dates' order, checked once
    return log, category_held, intent_held


def _row_chunks(
    log: _Log, space: _Space, walked: np.ndarray, decays: Sequence[float]
) -> Iterator[tuple[Period, _Snapshot, RowScores]]:
    """The baseline rows' scores for the `walked` baskets, a chunk at a time, with their period."""
    counts = {
        period: _PeriodCounts.count(space, log.timestamps < before, log.segments, log.segment_count)
        for period, before in (("validation", log.validation_from), ("test", log.test_from))
    }
    for snapshot in _walk(space, log.households, log.timestamps, walked, decays, log.test_from):
        period: Period = "test" if log.timestamps[snapshot.positions[0]] >= log.test_from else "validation"
        yield period, snapshot, _baseline_scores(snapshot, counts[period], log.segments[snapshot.positions], decays)


def evaluate_next_baskets(
    baskets: Iterable[Basket],
    categories: Sequence[str],
    intent_of: Mapping[str, str | None] | Callable[[str], str | None],
    intents: Sequence[str],
    validation_from: date,
    test_from: date,
    *,
    period: Period = "test",
    extra_category_rows: ScoreRows | None = None,
    extra_intent_rows: ScoreRows | None = None,
    recency_decay: float | None = None,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Score every row on `period`'s scored baskets (see the module's docstring for the protocol).

    `categories` and `intents` are ordered vocabularies: extra rows give one score per entry, in
    that order, for every basket `scored_baskets` returns (extra baskets are ignored).
    `intent_of` maps a category to its intent or None; a basket category outside `categories`,
    or an intent outside `intents`, is an error. `recency_decay` None chooses it on validation, per
    space on its first metric (intents take the categories' decay if no validation basket has one).
    The result has, per metric, `{row: mean, row_ci: [low, high]}`, the number of baskets behind
    each metric (`baskets`), the same on households with a segment (`segment_households`; the
    `segment` row's own figures are those), and the decays with their validation figures.
    """
    log, category_held, intent_held = _encode(baskets, categories, intent_of, intents, validation_from, test_from)
    in_period = log.scored(period)
    in_validation = log.scored("validation")
    tuning = recency_decay is None
    decays = RECENCY_DECAYS if tuning else (float(recency_decay),)  # type: ignore[arg-type]
    if tuning and not in_validation.any():
        raise ValueError("no validation basket to choose the recency decay on: pass recency_decay")
    walked = np.flatnonzero(in_period | (in_validation if tuning else False))
    scored_ids = [log.baskets[position].basket_id for position in np.flatnonzero(in_period)]

    spaces = {
        "category": _Space(CATEGORY_METRICS, CATEGORY_TOP, len(categories), category_held, extra_category_rows or {}),
        "intent": _Space(INTENT_METRICS, INTENT_TOP, len(intents), intent_held, extra_intent_rows or {}),
    }
    for space_name, space in spaces.items():
        for row, scores in space.extra_rows.items():
            _check_extra_row(space_name, row, scores, scored_ids, space.size)

    values: dict[tuple[str, str], np.ndarray] = {}  # (metric, row) -> per scored basket, NaN where none
    chosen: dict[str, float] = {}
    validation_figures: dict[str, dict[str, float]] = {}
    for space_name, space in spaces.items():
        order = _ranking_order(_popularity(space.held, log.timestamps < log.validation_from, space.size))
        space_values: dict[tuple[str, str], np.ndarray] = {}
        for chunk_period, snapshot, rows in _row_chunks(log, space, walked, decays):
            if chunk_period == period:
                for row, scores in space.extra_rows.items():
                    rows[row] = (np.stack([scores[log.baskets[p].basket_id] for p in snapshot.positions]), None)
            offset = np.searchsorted(walked, snapshot.positions)
            for key, figures in _score(space, snapshot, rows, order).items():
                space_values.setdefault(key, np.full(len(walked), np.nan))[offset] = figures
        if tuning:
            validation = in_validation[walked]
            main = space.metrics[0]
            by_decay = {decay: space_values[(main, f"personal_recency@{decay}")][validation] for decay in decays}
            if np.isnan(by_decay[decays[0]]).all():  # no validation basket holds an intent
                chosen[space_name] = chosen["category"]
                validation_figures[space_name] = {}
            else:
                means = {decay: float(np.nanmean(figures)) for decay, figures in by_decay.items()}
                chosen[space_name] = max(decays, key=lambda decay: means[decay])
                validation_figures[space_name] = {str(decay): round(mean, 4) for decay, mean in means.items()}
        else:
            chosen[space_name] = decays[0]
            validation_figures[space_name] = {}
        for (metric, row), figures in space_values.items():
            if row.startswith("personal_recency@"):
                if float(row.removeprefix("personal_recency@")) != chosen[space_name]:
                    continue
                row = "personal_recency"
            values[(metric, row)] = figures[in_period[walked]]

    scored_households = log.households[in_period]
    with_segment = log.segments[in_period] >= 0
    result: dict[str, Any] = {
        "period": period,
        "validation_from": _iso(log.validation_from),
        "test_from": _iso(log.test_from),
        "test_baskets": int(in_period.sum()),
        "households": len(np.unique(scored_households)),
        "recency_decay": {
            "categories": chosen["category"],
            "intents": chosen["intent"],
            "validation": {
                "category_recall_at_10": validation_figures["category"],
                "intent_recall_at_5": validation_figures["intent"],
            },
        },
    }
    everyone = np.ones(len(scored_households), dtype=bool)
    result |= _figures(values, scored_households, everyone, draws, seed, skip_rows={"segment"})
    subset = _figures(values, scored_households, with_segment, draws, seed, skip_rows=set())
    for metric in METRICS:
        block = {**result[metric], "segment": subset[metric]["segment"], "segment_ci": subset[metric]["segment_ci"]}
        result[metric] = dict(sorted(block.items(), key=lambda item: _row_rank(item[0])))
    result["segment_households"] = {
        "test_baskets": int(with_segment.sum()),
        "households": len(np.unique(scored_households[with_segment])),
        **subset,
    }
    return result


def baseline_scores(
    baskets: Iterable[Basket],
    categories: Sequence[str],
    intent_of: Mapping[str, str | None] | Callable[[str], str | None],
    intents: Sequence[str],
    validation_from: date,
    test_from: date,
    *,
    row: str,
    space: Literal["category", "intent"] = "category",
    period: Period = "test",
    recency_decay: float = 0.98,
) -> dict[str, np.ndarray]:
    """One baseline row's scores (float32, one per category or intent) for each basket scored in
    `period`, exactly as the evaluation ranks them: for a model row that builds on a baseline, and
    for its ablation. Rows without a score for a basket (`segment` without a segment) leave it out.
    """
    if row not in BASELINE_ROWS:
        raise ValueError(f"unknown baseline row {row!r}; known: {', '.join(BASELINE_ROWS)}")
    log, category_held, intent_held = _encode(baskets, categories, intent_of, intents, validation_from, test_from)
    held, size = (category_held, len(categories)) if space == "category" else (intent_held, len(intents))
    encoded = _Space((), 0, size, held, {})
    name = f"personal_recency@{recency_decay}" if row == "personal_recency" else row
    scores: dict[str, np.ndarray] = {}
    for _, snapshot, rows in _row_chunks(log, encoded, np.flatnonzero(log.scored(period)), (recency_decay,)):
        values, applies = rows[name]
        for number, position in enumerate(snapshot.positions):
            if applies is None or applies[number]:
                scores[log.baskets[position].basket_id] = np.asarray(values[number], dtype=np.float32)
    return scores


def _vocabulary_index(names: Sequence[str], kind: str) -> dict[str, int]:
    index = {name: number for number, name in enumerate(names)}
    if len(index) != len(names):
        raise ValueError(f"the {kind} vocabulary repeats a name")
    return index


def _check_extra_row(space: str, row: str, scores: Mapping[str, np.ndarray], scored_ids: list[str], size: int) -> None:
    if row in BASELINE_ROWS or row.startswith("personal_recency"):
        raise ValueError(f"extra {space} row {row!r} takes the name of a baseline row")
    missing = [basket_id for basket_id in scored_ids if basket_id not in scores]
    if missing:
        raise ValueError(
            f"extra {space} row {row!r} has no scores for {len(missing)} scored baskets, e.g. {missing[:3]}"
        )
    wrong = next((i for i in scored_ids if np.shape(scores[i]) != (size,) or not np.isfinite(scores[i]).all()), None)
    if wrong is not None:
        raise ValueError(f"extra {space} row {row!r}: basket {wrong!r} does not have {size} finite scores")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).date().isoformat()


def _walk(
    space: _Space,
    households: np.ndarray,
    timestamps: np.ndarray,
    scored: np.ndarray,
    decays: Sequence[float],
    boundary: float,
) -> Iterator[_Snapshot]:
    """Walk the log once in time order, keeping per-household counts, and yield what was known
    just before each scored basket, CHUNK_BASKETS at a time; a chunk never spans `boundary` (the
    test date), so each chunk belongs to one period."""
    count = int(households.max()) + 1 if len(households) else 0
    size = space.size
    decay_column = np.array(decays)[:, None]
    frequency = np.zeros((count, size), dtype=np.float32)
    recency = np.zeros((len(decays), count, size), dtype=np.float64)
    last_bought = np.full((count, size), -np.inf)
    last_basket: list[np.ndarray | None] = [None] * count
    explore_seconds = EXPLORE_DAYS * DAY_SECONDS

    buffer: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []
    scored_set = set(scored.tolist())
    for position in range(len(households)):
        household = households[position]
        held = space.held[position]
        if position in scored_set:
            if buffer and timestamps[buffer[0][0]] < boundary <= timestamps[position]:
                yield _stack(buffer, space)
                buffer = []
            # The last basket is one basket ago: its weight is decay ** 1.
            buffer.append(
                (
                    position,
                    frequency[household].copy(),
                    recency[:, household] * decay_column,
                    last_bought[household] >= timestamps[position] - explore_seconds,
                    last_basket[household],
                )
            )
            if len(buffer) == CHUNK_BASKETS:
                yield _stack(buffer, space)
                buffer = []
        frequency[household, held] += 1.0
        recency[:, household] *= decay_column
        recency[:, household, held] += 1.0
        last_bought[household, held] = timestamps[position]
        last_basket[household] = held
    if buffer:
        yield _stack(buffer, space)


def _stack(buffer: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]], space: _Space) -> _Snapshot:
    count = len(buffer)
    last_basket = np.zeros((count, space.size), dtype=bool)
    truth = np.zeros((count, space.size), dtype=bool)
    for row, (position, _, _, _, last) in enumerate(buffer):
        if last is not None:
            last_basket[row, last] = True
        truth[row, space.held[position]] = True
    return _Snapshot(
        positions=np.array([item[0] for item in buffer]),
        frequency=np.stack([item[1] for item in buffer]),
        recency=np.stack([item[2] for item in buffer], axis=1),
        last_basket=last_basket,
        recent=np.stack([item[3] for item in buffer]),
        truth=truth,
    )


@dataclass(frozen=True)
class _PeriodCounts:
    """Basket counts before a period starts: overall (top sellers) and per segment."""

    popularity: np.ndarray  # (size,)
    by_segment: np.ndarray  # (segments, size)

    @classmethod
    def count(cls, space: _Space, counted: np.ndarray, segments: np.ndarray, segment_count: int) -> _PeriodCounts:
        positions = np.flatnonzero(counted & (segments >= 0))
        lengths = np.array([len(space.held[p]) for p in positions], dtype=np.int64)
        flat = np.concatenate([space.held[p] for p in positions]) if len(positions) else np.zeros(0, np.int64)
        keys = np.repeat(segments[positions], lengths) * space.size + flat
        rows = max(segment_count, 1)  # a log without segments still indexes a (zero) row
        by_segment = np.bincount(keys, minlength=rows * space.size).astype(np.float64)
        return cls(_popularity(space.held, counted, space.size), by_segment.reshape(rows, space.size))


def _popularity(held: list[np.ndarray], counted: np.ndarray, size: int) -> np.ndarray:
    chosen = [held[position] for position in np.flatnonzero(counted)]
    flat = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    return np.bincount(flat, minlength=size).astype(np.float64)


def _ranking_order(training_popularity: np.ndarray) -> np.ndarray:
    """Indices by training popularity (most popular first, then vocabulary order): the tie-break."""
    return np.lexsort((np.arange(len(training_popularity)), -training_popularity))


RowScores = dict[str, tuple[np.ndarray, np.ndarray | None]]  # row -> (scores (n, size), applies (n,) or None)


def _baseline_scores(
    snapshot: _Snapshot, counts: _PeriodCounts, segments: np.ndarray, decays: Sequence[float]
) -> RowScores:
    count = len(snapshot.positions)
    popularity = counts.popularity
    normalised = popularity / popularity.max() if popularity.max() > 0 else popularity
    rows: RowScores = {
        "top_sellers": (np.broadcast_to(popularity, (count, len(popularity))), None),
        "segment": (counts.by_segment[np.maximum(segments, 0)], segments >= 0),
        "personal_frequency": (snapshot.frequency, None),
    }
    for number, decay in enumerate(decays):
        rows[f"personal_recency@{decay}"] = (snapshot.recency[number] + POPULARITY_WEIGHT * normalised, None)
    rows["last_basket"] = (snapshot.last_basket.astype(np.float32), None)
    return rows


def _top(scores: np.ndarray, order: np.ndarray, top: int) -> np.ndarray:
    """The `top` best indices per row, equal scores in `order` (a stable sort on permuted columns)."""
    return order[np.argsort(-scores[:, order], axis=1, kind="stable")[:, :top]]


def _score(space: _Space, snapshot: _Snapshot, rows: RowScores, order: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    new = ~snapshot.recent
    explore_truth = snapshot.truth & new
    figures: dict[tuple[str, str], np.ndarray] = {}
    for row, (scores, applies) in rows.items():
        scores = np.asarray(scores, dtype=np.float64)
        overall = _ranked_figures(_top(scores, order, space.top), snapshot.truth, space.top)
        explore = _ranked_figures(_top(np.where(new, scores, -np.inf), order, space.top), explore_truth, space.top)
        recall_name, *others = space.metrics
        names = [recall_name, *others]
        # category metrics: (recall, explore recall); intent metrics: (recall, ndcg, explore recall, explore ndcg)
        produced = (overall[0], explore[0]) if len(names) == 2 else (*overall, *explore)
        for name, values in zip(names, produced, strict=True):
            if applies is not None:
                values = np.where(applies, values, np.nan)
            figures[(name, row)] = values
    return figures


def _ranked_figures(top: np.ndarray, truth: np.ndarray, cutoff: int) -> tuple[np.ndarray, np.ndarray]:
    """(recall, NDCG) at `cutoff` per basket, NaN where the truth is empty; binary gains."""
    relevant = truth.sum(axis=1)
    ideal = np.minimum(relevant, cutoff)
    gains = np.take_along_axis(truth, top, axis=1)
    discounts = 1.0 / np.log2(np.arange(2, cutoff + 2))
    ideal_gain = np.concatenate([[np.nan], np.cumsum(discounts)])[ideal]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(ideal > 0, gains.sum(axis=1) / ideal, np.nan)
        ndcg = np.where(ideal > 0, (gains * discounts).sum(axis=1) / ideal_gain, np.nan)
    return recall, ndcg


# Aggregation and intervals ----------------------------------------------------------------------


def bootstrap_interval(
    values: np.ndarray, households: np.ndarray, draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float, float]:
    """(mean over baskets, low, high): a 95% percentile interval, households resampled with
    replacement; NaN values (baskets the figure does not cover) are left out."""
    population = np.unique(households, return_inverse=True)[1]
    weights = _resampling_weights(int(population.max()) + 1 if len(population) else 0, draws, seed)
    return _interval(values, population, weights)


def _resampling_weights(households: int, draws: int, seed: int) -> np.ndarray:
    """(draws, households): how many times each household is drawn in each resample."""
    if households == 0:
        return np.zeros((draws, 0))
    rng = np.random.default_rng(seed)
    return rng.multinomial(households, np.full(households, 1.0 / households), size=draws).astype(np.float64)


def _interval(values: np.ndarray, population: np.ndarray, weights: np.ndarray) -> tuple[float, float, float]:
    covered = ~np.isnan(values)
    if not covered.any():
        return float("nan"), float("nan"), float("nan")
    count = weights.shape[1]
    sums = np.bincount(population[covered], weights=values[covered], minlength=count)
    baskets = np.bincount(population[covered], minlength=count).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        resampled = (weights @ sums) / (weights @ baskets)
    low, high = np.nanpercentile(resampled, [2.5, 97.5])
    return float(sums.sum() / baskets.sum()), float(low), float(high)


def _figures(
    values: Mapping[tuple[str, str], np.ndarray],
    households: np.ndarray,
    mask: np.ndarray,
    draws: int,
    seed: int,
    skip_rows: set[str],
) -> dict[str, Any]:
    population = np.unique(households[mask], return_inverse=True)[1]
    weights = _resampling_weights(int(population.max()) + 1 if len(population) else 0, draws, seed)
    figures: dict[str, Any] = {"baskets": {}}
    for metric in METRICS:
        block: dict[str, Any] = {}
        for (name, row), per_basket in values.items():
            if name != metric or row in skip_rows:
                continue
            mean, low, high = _interval(per_basket[mask], population, weights)
            block[row] = _rounded(mean)
            block[f"{row}_ci"] = [_rounded(low), _rounded(high)]
        figures[metric] = dict(sorted(block.items(), key=lambda item: _row_rank(item[0])))
        figures["baskets"][metric] = int((~np.isnan(values[(metric, "top_sellers")][mask])).sum())
    return figures


def _row_rank(key: str) -> tuple[int, int]:
    """Baselines first, in BASELINE_ROWS order, then extra rows as given; a row's `_ci` after it."""
    row = key.removesuffix("_ci")
    return (BASELINE_ROWS.index(row) if row in BASELINE_ROWS else len(BASELINE_ROWS), key.endswith("_ci"))


def _rounded(value: float) -> float | None:
    """Four decimals; None (JSON null) for a figure no basket supports."""
    return round(value, 4) if np.isfinite(value) else None


# The table --------------------------------------------------------------------------------------

_COLUMNS = {
    "category_recall_at_10": "category R@10",
    "explore_category_recall_at_10": "explore cat. R@10",
    "intent_recall_at_5": "intent R@5",
    "intent_ndcg_at_5": "intent NDCG@5",
    "explore_intent_recall_at_5": "explore int. R@5",
    "explore_intent_ndcg_at_5": "explore int. NDCG@5",
}


def format_table(result: Mapping[str, Any]) -> str:
    """One table: a line per row (then the rows again on the households with a segment), a column
    per metric as `mean [low, high]`, and the number of baskets behind each column."""

    def cell(block: Mapping[str, Any], row: str) -> str:
        if row not in block:
            return ""
        if block[row] is None:
            return "n/a"
        low, high = block[f"{row}_ci"]
        return f"{block[row]:.3f} [{low:.3f}, {high:.3f}]"

    subset = result["segment_households"]
    rows = [row for row in result[METRICS[0]] if not row.endswith("_ci")]
    lines: list[list[str]] = [["row", *_COLUMNS.values()]]
    lines.append(["baskets", *(f"{result['baskets'][metric]:,}" for metric in _COLUMNS)])
    lines += [[row, *(cell(result[metric], row) for metric in _COLUMNS)] for row in rows if row != "segment"]
    lines.append([f"segment households ({subset['households']:,})", *(f"{subset['baskets'][m]:,}" for m in _COLUMNS)])
    lines += [[f"  {row}", *(cell(subset[metric], row) for metric in _COLUMNS)] for row in rows]
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    decay = result["recency_decay"]
    since = result["test_from"] if result["period"] == "test" else result["validation_from"]
    title = (
        f"Next basket, {result['period']} from {since}: "
        f"{result['test_baskets']:,} baskets of {result['households']:,} households; "
        f"recency decay {decay['categories']} (categories), {decay['intents']} (intents); 95% bootstrap intervals"
    )
    body = ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join([title, *body])
