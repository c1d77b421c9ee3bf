"""The intent taxonomy and the product catalogue: data files shipped in `intent/data/`.

Both are data, not code, so an operator can replace them with their own (`load_taxonomy(path)`,
`load_catalogue(path)`); the model's vocabularies are built from whatever catalogue it was trained on.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

DATA_DIR = Path(__file__).resolve().parent / "data"
TAXONOMY_PATH = DATA_DIR / "intents.json"
CATALOGUE_PATH = DATA_DIR / "catalogue.csv"


@dataclass(frozen=True, slots=True)
class Intent:
    id: str
    label: str
    description: str
    sensitive: bool
    categories: Mapping[str, float]  # category -> share of this intent's on-intent events


@dataclass(frozen=True, slots=True)
class Taxonomy:
    intents: tuple[Intent, ...]
    browsing_intent: str
    segments: Mapping[str, Mapping[str, float]]  # segment -> prior weight of each intent

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(intent.id for intent in self.intents)

    def index(self, intent_id: str) -> int:
        return self.ids.index(intent_id)

    def get(self, intent_id: str) -> Intent:
        return self.intents[self.index(intent_id)]

    def category_to_intent(self) -> dict[str, str]:
        """Each category's strongest intent: the default weak-label mapping."""
        best: dict[str, tuple[float, str]] = {}
        for intent in self.intents:
            for category, weight in intent.categories.items():
                if weight > best.get(category, (0.0, ""))[0]:
                    best[category] = (weight, intent.id)
        return {category: intent_id for category, (_, intent_id) in best.items()}


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    sku: str
    name: str
    category: str
    brand: str
    price: float
    in_stock: bool


def load_taxonomy(path: Path = TAXONOMY_PATH) -> Taxonomy:
    raw = orjson.loads(path.read_bytes())
    intents = tuple(
        Intent(
            id=item["id"],
            label=item["label"],
            description=item["description"],
            sensitive=bool(item["sensitive"]),
            categories=dict(item["categories"]),
        )
        for item in raw["intents"]
    )
    taxonomy = Taxonomy(intents, raw["browsing_intent"], raw.get("segments", {}))
    if taxonomy.browsing_intent not in taxonomy.ids:
        raise ValueError(f"{path}: browsing_intent {taxonomy.browsing_intent!r} is not an intent")
    for segment, weights in taxonomy.segments.items():
        unknown = set(weights) - set(taxonomy.ids)
        if unknown:
            raise ValueError(f"{path}: segment {segment!r} names unknown intents {sorted(unknown)}")
    return taxonomy


def load_catalogue(path: Path = CATALOGUE_PATH) -> tuple[Product, ...]:
    with path.open(newline="", encoding="utf-8") as handle:
        return tuple(
            Product(
                product_id=row["product_id"],
                sku=row["sku"],
                name=row["name"],
                category=row["category"],
                brand=row["brand"],
                price=float(row["price"]),
                in_stock=row["in_stock"].strip().lower() == "true",
            )
            for row in csv.DictReader(handle)
        )
