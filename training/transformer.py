"""The alternative to IntentGRU that `python -m training compare` measures: a small causal Transformer.

Same inputs and forward contract as IntentGRU (features (batch, time, columns) int64 -> logits
(batch, time, intents)), an intent distribution after every event from past events only. In each
layer an event attends to itself and the events just before it (its span), with ALiBi distance
penalties instead of absolute positions; the spans of the stacked layers add up to at most `window`
events, so the output after an event depends only on the last `window` events. Training on whole
sequences and re-reading a `window`-event window in the stream therefore give the same outputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from intent.features import FEATURE_COLUMNS
from training.network import EMBEDDING_DIMS

WINDOW = 50


class CausalBlock(nn.Module):
    """Pre-norm self-attention (with an additive mask/bias) and a feed-forward layer."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attention_norm = nn.LayerNorm(width)
        self.query_key_value = nn.Linear(width, 3 * width)
        self.attention_out = nn.Linear(width, width)
        self.feedforward_norm = nn.LayerNorm(width)
        self.feedforward = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape
        query, key, value = (
            self.query_key_value(self.attention_norm(x))
            .reshape(batch, time, 3, self.heads, width // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        scores = query @ key.transpose(-1, -2) / math.sqrt(width // self.heads) + bias
        attended = (scores.softmax(dim=-1) @ value).transpose(1, 2).reshape(batch, time, width)
        x = x + self.attention_out(attended)
        return x + self.feedforward(self.feedforward_norm(x))


class IntentTransformer(nn.Module):
    def __init__(
        self,
        cardinalities: tuple[int, ...],
        intents: int,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
        window: int = WINDOW,
    ) -> None:
        super().__init__()
        self.window = window
        self.width = width
        # layers stack their spans: the last layer sees span - 1 events back, each of those saw
        # span - 1 further back, and so on; together they must fit in the window
        self.span = (window - 1) // layers + 1
        self.embeddings = nn.ModuleList(
            nn.Embedding(cardinality, EMBEDDING_DIMS[column])
            for column, cardinality in zip(FEATURE_COLUMNS, cardinalities, strict=True)
        )
        self.project = nn.Linear(sum(EMBEDDING_DIMS.values()), width)
        self.blocks = nn.ModuleList(CausalBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, intents)
        # ALiBi (Press et al. 2022): head h penalises a key d events back by d * 2^(-8(h+1)/heads),
        # so some heads look far back and some only at the last few events.
        slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)])
        self.register_buffer("slopes", slopes[:, None, None], persistent=False)

    def attention_bias(self, time: int) -> torch.Tensor:
        """(heads, time, time): -slope * distance inside the causal span, -inf elsewhere."""
        positions = torch.arange(time)
        distance = positions[:, None] - positions[None, :]
        inside = (distance >= 0) & (distance < self.span)
        return (-self.slopes * distance).masked_fill(~inside, float("-inf"))

    def forward(self, features: torch.Tensor, hidden: None = None) -> tuple[torch.Tensor, None]:
        """features (batch, time, columns) int64 -> logits (batch, time, intents). No recurrent
        state: the second element is None (the stream keeps the window instead)."""
        x = self.project(
            torch.cat([embedding(features[..., column]) for column, embedding in enumerate(self.embeddings)], dim=-1)
        )
        bias = self.attention_bias(features.shape[1])
        for block in self.blocks:
            x = block(x, bias)
        return self.head(self.norm(x)), None


class LastEventProbabilities(nn.Module):
    """The Transformer as the stream would run it: a session's window in, the distribution after
    its last event out."""

    def __init__(self, model: IntentTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model(window)
        return torch.softmax(logits[:, -1], dim=-1)
