from __future__ import annotations

import pytest

from intent.features import Featurizer, build_vocabulary
from intent.taxonomy import Product, Taxonomy, load_catalogue, load_taxonomy


@pytest.fixture(scope="session")
def taxonomy() -> Taxonomy:
    return load_taxonomy()


@pytest.fixture(scope="session")
def catalogue() -> tuple[Product, ...]:
    return load_catalogue()


@pytest.fixture(scope="session")
def featurizer(catalogue: tuple[Product, ...], taxonomy: Taxonomy) -> Featurizer:
    return Featurizer(build_vocabulary(catalogue, taxonomy.segments))
