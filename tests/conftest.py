from __future__ import annotations

from collections.abc import Iterator

import pytest

from intent.broker import BrokerError, EmbeddedBroker, free_port
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


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(port=free_port(), log_path=tmp_path_factory.mktemp("broker") / "broker.log")
    try:
        embedded.start()
    except BrokerError as error:
        pytest.skip(f"the embedded broker cannot start here: {error}")
    yield embedded
    embedded.stop()
