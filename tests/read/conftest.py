"""Fixtures of the read side's tests: the shipped model and the demo domain's suggester."""

from __future__ import annotations

import pytest

from intent.domain import load_domain
from intent.model import IntentModel
from intent.settings import REPO_DIR, Settings
from intent.suggest import CrowdCounts, MerchandisingRules, Suggester


@pytest.fixture(scope="module")
def model() -> IntentModel:
    return IntentModel.load(REPO_DIR / "models" / "intent-gru")


@pytest.fixture(scope="module")
def suggester() -> Suggester:
    domain = load_domain(Settings().domain_dir)
    rules = MerchandisingRules.load(domain.merchandising_rules)
    return Suggester(domain.taxonomy, domain.catalogue, rules, CrowdCounts(3 * 86400), 5)
