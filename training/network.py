"""The compact causal sequence model: per-column embeddings -> one-layer GRU -> intent logits.

A GRU rather than a small causal Transformer because the stream updates one event at a time: the
GRU's state is one small vector per shopper (a step costs O(1) whatever the history), while a
Transformer must re-read its window at every event. `python -m training compare` measures both.
"""

from __future__ import annotations

import torch
from torch import nn

from intent.features import FEATURE_COLUMNS

EMBEDDING_DIMS: dict[str, int] = {
    "event_type": 8,
    "category": 32,
    "price_bucket": 4,
    "gap_bucket": 8,
    "hour": 4,
    "device": 4,
    "channel": 4,
    "segment": 8,
}


class IntentGRU(nn.Module):
    def __init__(self, cardinalities: tuple[int, ...], intents: int, hidden_size: int = 128) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.embeddings = nn.ModuleList(
            nn.Embedding(cardinality, EMBEDDING_DIMS[column])
            for column, cardinality in zip(FEATURE_COLUMNS, cardinalities, strict=True)
        )
        self.gru = nn.GRU(sum(EMBEDDING_DIMS.values()), hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, intents)

    def forward(self, features: torch.Tensor, hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """features (batch, time, columns) int64 -> logits (batch, time, intents), last hidden."""
        embedded = torch.cat(
            [embedding(features[..., column]) for column, embedding in enumerate(self.embeddings)],
            dim=-1,
        )
        outputs, last = self.gru(embedded, hidden)
        return self.head(outputs), last


class SequenceProbabilities(nn.Module):
    """The exported full model: a whole sequence in, a distribution after every event out."""

    def __init__(self, model: IntentGRU) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model(features)
        return torch.softmax(logits, dim=-1)


class StepProbabilities(nn.Module):
    """The exported step model: one event and the window's state in, distribution and state out."""

    def __init__(self, model: IntentGRU) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, last = self.model(features.unsqueeze(1), hidden.unsqueeze(0))
        return torch.softmax(logits[:, 0], dim=-1), last[0]


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
