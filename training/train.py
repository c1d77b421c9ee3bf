"""Fit the intent model (IntentGRU unless given another): cross-entropy on the intent after every event.

The target after each event is the labelled intent or, given a teacher (the Bayes filter on
simulated shoppers, `training.teacher`), a mix of it with the teacher's posterior.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from intent.features import FEATURE_COLUMNS, FIRST_KNOWN_ID, OUT_OF_VOCABULARY, padded_batches
from training.network import IntentGRU

IGNORE = -100
# Feature rows (batch, time, columns) -> a target distribution per event (batch, time, intents).
Teacher = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 14
    batch_size: int = 32
    hidden_size: int = 128
    learning_rate: float = 3e-3
    seed: int = 0
    threads: int = 2
    # Share of events whose category is hidden as out-of-vocabulary while training, so the model
    # learns that an unknown category is no evidence (a shop's own categories, unmapped, must not
    # read as some intent).
    unknown_category_rate: float = 0.05
    # With a teacher, the weight of its posterior in each event's target (the rest: the label).
    # `python -m training all --distillation-weight W`, all else default: W = 0 (labels only),
    # 0.5, 0.9, 1 gave 3.78, 2.81, 2.50, 2.48 false alarms per 1,000 validation events under the
    # detector `all` tunes (3.10, 2.21, 1.83, 1.75 on the test shoppers) and best validation
    # accuracy 0.9650, 0.9681, 0.9696, 0.9696. The exact posterior holds what a label can teach
    # without its noise (which intent a shopper had just after a switch no event has shown yet).
    distillation_weight: float = 1.0


@dataclass
class TrainResult:
    model: nn.Module
    seconds: float
    validation_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = 0


def _training_batches(
    features: Sequence[np.ndarray], labels: Sequence[np.ndarray], config: TrainConfig
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = []
    for positions, batch in padded_batches(features, config.batch_size):
        y = np.full(batch.shape[:2], IGNORE, dtype=np.int64)
        for row, i in enumerate(positions):
            y[row, : len(labels[i])] = labels[i]
        batches.append((torch.from_numpy(batch), torch.from_numpy(y)))
    return batches


CATEGORY_COLUMN = FEATURE_COLUMNS.index("category")


def hide_some_categories(x: torch.Tensor, rate: float) -> torch.Tensor:
    if rate <= 0:
        return x
    hidden = (torch.rand(x.shape[:2]) < rate) & (x[..., CATEGORY_COLUMN] >= FIRST_KNOWN_ID)
    x = x.clone()
    x[..., CATEGORY_COLUMN][hidden] = OUT_OF_VOCABULARY
    return x


def event_targets(
    x: torch.Tensor, labels: torch.Tensor, intents: int, teacher: Teacher | None, distillation_weight: float
) -> torch.Tensor:
    """Each event's target distribution, (batch, time, intents); padding rows are all zero.

    Cross-entropy is linear in the target, so the mixed target's loss is the weighted sum of the
    soft (teacher) and hard (label) losses.
    """
    padding = labels == IGNORE
    targets = nn.functional.one_hot(labels.masked_fill(padding, 0), intents).to(torch.float32)
    if teacher is not None:
        with torch.no_grad():
            targets = distillation_weight * teacher(x) + (1 - distillation_weight) * targets
    return targets.masked_fill(padding[..., None], 0.0)


def predict(model: nn.Module, features: Sequence[np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
    """Torch full-sequence probabilities per sequence (what the exported model must reproduce)."""
    model.eval()
    outputs: list[np.ndarray] = [np.empty(0)] * len(features)
    with torch.no_grad():
        for positions, batch in padded_batches(features, batch_size):
            logits, _ = model(torch.from_numpy(batch))
            probabilities = torch.softmax(logits, dim=-1).numpy()
            for row, i in enumerate(positions):
                outputs[i] = probabilities[row, : len(features[i])]
    return outputs


def accuracy(probabilities: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> float:
    correct = sum(int((p.argmax(axis=1) == y).sum()) for p, y in zip(probabilities, labels, strict=True))
    return correct / max(1, sum(len(y) for y in labels))


def train(
    cardinalities: tuple[int, ...],
    intents: int,
    train_features: Sequence[np.ndarray],
    train_labels: Sequence[np.ndarray],
    validation_features: Sequence[np.ndarray],
    validation_labels: Sequence[np.ndarray],
    config: TrainConfig,
    progress: bool = True,
    model: nn.Module | None = None,
    teacher: Teacher | None = None,
) -> TrainResult:
    """Fit `model` (default: a fresh IntentGRU) with Adam and a cosine schedule; keeps the epoch
    with the best validation accuracy. A `teacher` sees the same rows as the model, categories
    hidden included, and its posterior joins the labels as the target."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    shuffle = random.Random(config.seed)
    model = model if model is not None else IntentGRU(cardinalities, intents, config.hidden_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    batches = _training_batches(train_features, train_labels, config)
    result = TrainResult(model, 0.0)
    best_state = None
    started = time.perf_counter()
    bar = tqdm(total=config.epochs * len(batches), disable=not progress, desc="train", unit="batch")
    for epoch in range(config.epochs):
        model.train()
        shuffle.shuffle(batches)
        for x, y in batches:
            x = hide_some_categories(x, config.unknown_category_rate)
            targets = event_targets(x, y, intents, teacher, config.distillation_weight)
            logits, _ = model(x)
            loss = -(targets * torch.log_softmax(logits, dim=-1)).sum() / (y != IGNORE).sum()
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        scheduler.step()
        score = accuracy(predict(model, validation_features), validation_labels)
        best_state = _keep_the_best(model, result, epoch, config.epochs, score, started, best_state)
    bar.close()
    return _finished(model, result, best_state, started)


def _keep_the_best(
    model: nn.Module,
    result: TrainResult,
    epoch: int,
    epochs: int,
    score: float,
    started: float,
    best_state: dict[str, torch.Tensor] | None,
) -> dict[str, torch.Tensor] | None:
    """Record an epoch's validation score; returns the weights of the best epoch so far."""
    result.validation_accuracy.append(score)
    tqdm.write(f"epoch {epoch + 1}/{epochs}: validation {score:.4f} ({time.perf_counter() - started:.0f} s)")
    if score >= max(result.validation_accuracy):
        result.best_epoch = epoch + 1
        return {k: v.clone() for k, v in model.state_dict().items()}
    return best_state


def _finished(
    model: nn.Module, result: TrainResult, best_state: dict[str, torch.Tensor] | None, started: float
) -> TrainResult:
    """The model with its best epoch's weights, in evaluation mode."""
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - started
    return result


# Households' sequences run to thousands of events, and a GRU steps through time one event at a
# time: back-propagating through a whole year per update would give a few updates per epoch at a
# high cost per step. Training runs NEXT_BASKET_GROUP households side by side and takes a gradient
# step every NEXT_BASKET_CHUNK events, carrying the state forward (truncated back-propagation
# through time), so the model still reads each household's history from its first event.
NEXT_BASKET_GROUP = 64
NEXT_BASKET_CHUNK = 128
NEXT_BASKET_BATCH_EVENTS = 65_536  # event slots per batch when only predicting


def _length_batches(lengths: Sequence[int], budget: int, most: int = 64) -> list[list[int]]:
    """Sequences of similar length grouped so that each group's padded size stays within `budget`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and ((len(current) + 1) * lengths[i] > budget or len(current) == most):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _pad(arrays: Sequence[np.ndarray], fill: int) -> np.ndarray:
    longest = max(len(a) for a in arrays)
    out = np.full((len(arrays), longest, *arrays[0].shape[1:]), fill, dtype=arrays[0].dtype)
    for row, array in enumerate(arrays):
        out[row, : len(array)] = array
    return out


def next_basket_outputs(model: nn.Module, features: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Torch per-event intent and category probabilities for each sequence (the exported model's reference)."""
    model.eval()
    intents: list[np.ndarray] = [np.empty(0)] * len(features)
    categories: list[np.ndarray] = [np.empty(0)] * len(features)
    with torch.no_grad():
        for chosen in _length_batches([len(f) for f in features], 4 * NEXT_BASKET_BATCH_EVENTS):
            intent_logits, category_logits, _ = model.heads(torch.from_numpy(_pad([features[i] for i in chosen], 0)))
            intent_p, category_p = torch.sigmoid(intent_logits).numpy(), torch.sigmoid(category_logits).numpy()
            for row, i in enumerate(chosen):
                intents[i] = intent_p[row, : len(features[i])]
                categories[i] = category_p[row, : len(features[i])]
    return intents, categories


def train_next_basket(
    model: nn.Module,
    features: Sequence[np.ndarray],
    next_basket: Sequence[np.ndarray],
    intent_targets: np.ndarray,
    category_targets: np.ndarray,
    validation_score: Callable[[nn.Module], float],
    config: TrainConfig,
    progress: bool = True,
) -> TrainResult:
    """Fit a NextBasketGRU: binary cross-entropy on the intents and the categories of each event's
    next basket (`next_basket[i][t]`, a row of the target arrays, or NO_TARGET: no loss there).
    Keeps the epoch with the best `validation_score` (higher is better)."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    shuffle = random.Random(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    # longest first within a group, so the sequences still running at any time are a prefix
    order = sorted(range(len(features)), key=lambda i: -len(features[i]))
    groups = [order[start : start + NEXT_BASKET_GROUP] for start in range(0, len(order), NEXT_BASKET_GROUP)]
    intent_table = torch.from_numpy(intent_targets.astype(np.float32))
    category_table = torch.from_numpy(category_targets.astype(np.float32))
    result = TrainResult(model, 0.0)
    best_state = None
    started = time.perf_counter()
    steps = sum(-(-len(features[group[0]]) // NEXT_BASKET_CHUNK) for group in groups)
    bar = tqdm(total=config.epochs * steps, disable=not progress, desc="train", unit="step")
    for epoch in range(config.epochs):
        model.train()
        shuffle.shuffle(groups)
        for group in groups:
            lengths = np.array([len(features[i]) for i in group])
            x_all = hide_some_categories(
                torch.from_numpy(_pad([features[i] for i in group], 0)), config.unknown_category_rate
            )
            y_all = torch.from_numpy(_pad([next_basket[i] for i in group], -1))
            hidden = torch.zeros(1, len(group), model.hidden_size)
            for start in range(0, int(lengths[0]), NEXT_BASKET_CHUNK):
                running = int((lengths > start).sum())
                x = x_all[:running, start : start + NEXT_BASKET_CHUNK]
                target_rows = y_all[:running, start : start + NEXT_BASKET_CHUNK]
                intent_logits, category_logits, last = model.heads(x, hidden[:, :running].contiguous())
                hidden = last.detach()
                has_target = target_rows >= 0
                bar.update()
                if not bool(has_target.any()):
                    continue
                rows = target_rows[has_target]
                loss = nn.functional.binary_cross_entropy_with_logits(
                    intent_logits[has_target], intent_table[rows]
                ) + nn.functional.binary_cross_entropy_with_logits(category_logits[has_target], category_table[rows])
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
        scheduler.step()
        best_state = _keep_the_best(model, result, epoch, config.epochs, validation_score(model), started, best_state)
    bar.close()
    return _finished(model, result, best_state, started)
