"""The intent taxonomy and the product catalogue: data files of a domain (`intent/domain.py`).

Both are data, not code, so an operator can replace them with their own (`load_taxonomy(path)`,
`load_catalogue(path)`); the defaults are the demo domain's (`intent/domains/demo/`). The model's
vocabularies are built from whatever catalogue it was trained on.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from intent.events import normalise_category

DOMAINS_DIR = Path(__file__).resolve().parent / "domains"
DEMO_DOMAIN_DIR = DOMAINS_DIR / "demo"
TAXONOMY_PATH = DEMO_DOMAIN_DIR / "intents.json"
CATALOGUE_PATH = DEMO_DOMAIN_DIR / "catalogue.csv"


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
    # share of baskets that held it, where the feed says (0: unknown); ranks a category's products
    popularity: float = 0.0


_INTENT_KEYS = ("id", "label", "description", "sensitive", "categories")
PRODUCT_FIELDS = ("product_id", "sku", "name", "category", "brand", "price", "in_stock")


def load_taxonomy(path: Path = TAXONOMY_PATH) -> Taxonomy:
    """The intents file; a malformed one is a ValueError naming the file (and the intent)."""
    try:
        raw = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None
    missing = [key for key in ("intents", "browsing_intent") if key not in raw]
    if missing:
        raise ValueError(f"{path}: lacks {missing}")
    intents = tuple(_intent(item, f"{path}: intents[{position}]") for position, item in enumerate(raw["intents"]))
    taxonomy = Taxonomy(intents, raw["browsing_intent"], raw.get("segments", {}))
    repeated = sorted({i for i in taxonomy.ids if taxonomy.ids.count(i) > 1})
    if repeated:
        raise ValueError(f"{path}: intent ids {repeated} appear more than once")
    if taxonomy.browsing_intent not in taxonomy.ids:
        raise ValueError(f"{path}: browsing_intent {taxonomy.browsing_intent!r} is not an intent")
    for segment, weights in taxonomy.segments.items():
        unknown = set(weights) - set(taxonomy.ids)
        if unknown:
            raise ValueError(f"{path}: segment {segment!r} names unknown intents {sorted(unknown)}")
    return taxonomy


def _intent(item: dict[str, Any], where: str) -> Intent:
    missing = [key for key in _INTENT_KEYS if key not in item]
    if missing:
        raise ValueError(f"{where} ({item.get('id', 'no id')!r}) lacks {missing}")
    where = f"{where} ({item['id']!r})"
    if not isinstance(item["id"], str) or not item["id"]:
        raise ValueError(f"{where}: the id must be a non-empty string")
    if not isinstance(item["sensitive"], bool):
        raise ValueError(f"{where}: sensitive must be true or false, not {item['sensitive']!r}")
    categories = item["categories"]
    if not isinstance(categories, dict) or not all(
        isinstance(weight, int | float) and not isinstance(weight, bool) and weight >= 0
        for weight in categories.values()
    ):
        raise ValueError(f"{where}: categories must map each category to a weight >= 0")
    normalised = {normalise_category(category): weight for category, weight in categories.items()}
    return Intent(item["id"], item["label"], item["description"], item["sensitive"], normalised)


def load_catalogue(path: Path = CATALOGUE_PATH) -> tuple[Product, ...]:
    """The product feed: a CSV file with a header, or JSON Lines (one product object a line), with
    the fields of `Product`; `in_stock` is `true`/`false`; `popularity` (the share of baskets that
    held the product) is optional and ranks a category's products."""
    if path.suffix == ".jsonl":
        with path.open("rb") as handle:
            rows = [(number, orjson.loads(line)) for number, line in enumerate(handle, 1) if line.strip()]
    else:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(enumerate(csv.DictReader(handle), 2))  # line 1 is the header
    return tuple(_product(row, f"{path}: line {number}") for number, row in rows)


def _product(row: dict[str, Any], where: str) -> Product:
    missing = [name for name in PRODUCT_FIELDS if row.get(name) is None]
    if missing:
        raise ValueError(f"{where}: missing {missing}")
    in_stock = row["in_stock"]
    try:
        return Product(
            product_id=str(row["product_id"]),
            sku=str(row["sku"]),
            name=str(row["name"]),
            category=normalise_category(str(row["category"])),
            brand=str(row["brand"]),
            price=float(row["price"]),
            in_stock=in_stock if isinstance(in_stock, bool) else str(in_stock).strip().lower() == "true",
            popularity=float(row.get("popularity") or 0.0),
        )
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
