"""The console in a real browser (headless Chromium through Playwright) against a real worker on the
embedded broker: log in, watch a change arrive live, read the story shopper's timeline, manage a
subscription to a real receiver, and see a cross-site request refused. One worker serves the module.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
import orjson
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from intent.broker import EmbeddedBroker
from intent.kafka import wait_for_lag_zero
from intent.replay import replay
from tests.integration.conftest import API_TOKEN, Deployment, new_deployment
from tests.integration.console import wait_for_console
from tests.integration.test_stream import STORY_SHOPPER, story_lines

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page, Response

pytestmark = [pytest.mark.integration, pytest.mark.browser]

WAIT_MS = 60_000  # for what the worker has to do first (read, detect, deliver)
CATCH_UP_SECONDS = 150.0


@dataclass
class Console:
    deployment: Deployment
    base: str

    @property
    def page_url(self) -> str:
        return f"{self.base}/console/"


@pytest.fixture(scope="module")
def console(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    deployed = new_deployment(broker, tmp_path_factory.mktemp("console"))
    deployed.start_worker()
    base = f"http://127.0.0.1:{deployed.web_ports[0]}"
    try:
        asyncio.run(wait_for_console(base))
        yield Console(deployed, base)
    finally:
        deployed.stop_all()


@dataclass
class Visits:
    """Every URL the browser asked for or navigated to."""

    urls: list[str] = field(default_factory=list)

    def follow(self, context: BrowserContext) -> None:
        context.on("request", lambda request: self.urls.append(request.url))
        context.on("page", lambda page: page.on("framenavigated", lambda frame: self.urls.append(frame.url)))


@pytest.fixture
async def visits() -> Visits:
    return Visits()


@pytest.fixture
async def page(chromium: Browser, visits: Visits) -> AsyncIterator[Page]:
    context = await chromium.new_context(viewport={"width": 1400, "height": 1000})
    visits.follow(context)
    opened = await context.new_page()
    opened.set_default_timeout(WAIT_MS)
    opened.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    await context.close()
    assert not errors, f"the page's script failed: {errors}"


async def log_in(page: Page, console: Console) -> None:
    await page.goto(console.page_url)
    await page.fill("#token", API_TOKEN)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#live:not([hidden])")


def renamed_story(shopper: str) -> list[bytes]:
    """The story's events as another shopper's (her own ids, the same shift)."""
    return [line.replace(STORY_SHOPPER.encode(), shopper.encode()) for line in story_lines()]


async def test_a_login_shows_an_intent_change_arriving_live_and_the_token_is_never_in_a_url(
    console: Console, page: Page, visits: Visits
) -> None:
    await page.goto(console.page_url)
    assert await page.is_visible("#login-form") and not await page.is_visible("#live")
    await log_in(page, console)
    await page.wait_for_selector("#live-status:has-text('live')")
    assert await page.evaluate("document.cookie") == ""  # HttpOnly: the page's script cannot read it
    await page.evaluate("window.loadedBeforeTheChange = true")  # gone if the page were loaded again

    shopper = f"live-{uuid.uuid4().hex[:8]}"
    await replay(renamed_story(shopper), console.deployment.broker.bootstrap_servers, console.deployment.events_topic)
    row = page.locator("#live-changes tbody tr", has=page.locator(f"a:text-is('{shopper}')")).filter(
        has_text="Cold & flu care"
    )
    await row.wait_for()
    assert "Peppermint Tea x20" in await row.inner_text()  # the event that triggered it
    assert await page.locator("#total-changes .figure").inner_text() != "0"
    assert await page.evaluate("window.loadedBeforeTheChange")  # it came over the live view's event stream

    await page.click("#logout")
    await page.wait_for_selector("#login:not([hidden])")
    stored = await page.evaluate("JSON.stringify([localStorage, sessionStorage, history.length, location.href])")
    visited = [*visits.urls, page.url, stored]
    assert visits.urls and not [url for url in visited if API_TOKEN in url]


async def test_the_story_shoppers_timeline_shows_the_cold_and_flu_change_with_its_evidence_and_suggestions(
    console: Console, page: Page
) -> None:
    bootstrap = console.deployment.broker.bootstrap_servers
    await replay(story_lines(), bootstrap, console.deployment.events_topic)
    await wait_for_lag_zero(bootstrap, console.deployment.app_id, console.deployment.events_topic, CATCH_UP_SECONDS)
    await wait_for_lag_zero(bootstrap, console.deployment.app_id, console.deployment.changes_topic, CATCH_UP_SECONDS)
    await log_in(page, console)
    await page.click("#nav a[data-view=shopper]")
    await page.fill("#shopper-id", STORY_SHOPPER)
    await page.click("#shopper-form button[type=submit]")
    await page.wait_for_selector("#shopper-result:not([hidden]), #shopper-error:not(:empty)")
    error = await page.inner_text("#shopper-error")
    assert not error, f"the shopper view answered: {error}"

    change = page.locator("#shopper-changes .change[data-to-intent=cold_flu_care]")
    assert await change.count() == 1
    assert "Coffee ritual → Cold & flu care" in await change.locator("h3").inner_text()
    evidence = await change.locator("ol.evidence li").all_inner_texts()
    assert any("Peppermint Tea x20" in item and "mint tea" in item for item in evidence), evidence
    suggestions = change.locator("ul.suggestions li")
    assert await suggestions.count() > 0
    assert await suggestions.first.locator(".reasons").inner_text()  # each suggestion says why

    change_id = await change.get_attribute("data-change-id")
    assert await page.locator(f"#shopper-chart svg .change-marker[data-change-id='{change_id}']").count() == 1
    assert await page.locator("#shopper-chart svg g[data-intent=cold_flu_care] path").count() == 1
    assert await page.locator("#shopper-events tbody tr").count() > 3
    assert await page.locator("#shopper-events tbody tr.marked").count() >= 1
    assert "Cold & flu care" in await page.inner_text("#committed-intent")
    assert page.url.endswith(f"#/shopper/{STORY_SHOPPER}")


@dataclass
class Receiver:
    """A real webhook endpoint, verifying with the secret the console showed."""

    secret: str = ""
    verified: list[dict[str, object]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.verified.append(Webhook(self.secret).verify(body, dict(request.headers)))
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    endpoint = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", endpoint.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    endpoint.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    yield endpoint
    await runner.cleanup()


async def subscriptions_of_the_api(console: Console) -> list[dict[str, object]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{console.base}/v1/subscriptions", headers={"Authorization": f"Bearer {API_TOKEN}"}) as response,
    ):
        return (await response.json())["subscriptions"]


async def test_a_subscription_is_created_tested_rotated_and_deleted_from_the_console(
    console: Console, page: Page, receiver: Receiver
) -> None:
    await log_in(page, console)
    await page.click("#nav a[data-view=subscriptions]")
    await page.fill("#subscription-url", receiver.url)
    await page.fill("#subscription-description", "browser test")
    await page.check("#subscription-intents input[value=cold_flu_care]")
    await page.click("#subscription-form button[type=submit]")
    await page.wait_for_selector("#secret:not([hidden])")
    receiver.secret = await page.inner_text("#secret-value")
    assert receiver.secret.startswith("whsec_")
    row = page.locator("#subscription-list tbody tr", has_text=receiver.url)
    await row.wait_for()
    assert "Cold & flu care" in await row.inner_text()
    (listed,) = [s for s in await subscriptions_of_the_api(console) if s["url"] == receiver.url]
    assert listed["intents"] == ["cold_flu_care"]

    await row.locator("button", has_text="Send test").click()
    await row.locator(".test-result:has-text('test delivered: HTTP 204')").wait_for()
    assert [payload["type"] for payload in receiver.verified] == ["intent.ping"]  # signed with that secret
    await row.locator(".outcomes .badge.good").wait_for()  # the attempt, read back from its topic

    await page.click("#secret-done")
    await row.locator("button", has_text="Rotate secret").click()
    await page.wait_for_selector("#secret:not([hidden])")
    rotated = await page.inner_text("#secret-value")
    assert rotated.startswith("whsec_") and rotated != receiver.secret

    await row.locator("button", has_text="Delete").click()
    await row.wait_for(state="detached")
    assert not [s for s in await subscriptions_of_the_api(console) if s["url"] == receiver.url]


ATTACK = """<!doctype html><title>another site</title>
<form id=attack method=post enctype=text/plain action="{target}">
<input name='{{"url": "http://127.0.0.1:9/stolen", "description": "' value='"}}'>
</form>
<script>document.getElementById("attack").submit()</script>"""


@pytest.fixture
async def attacker(console: Console) -> AsyncIterator[int]:
    """A page on another port that posts a subscription to the console as soon as it loads."""
    page = ATTACK.format(target=f"{console.base}/console/api/subscriptions")

    async def serve(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def test_a_cross_site_post_is_refused_and_creates_nothing(console: Console, page: Page, attacker: int) -> None:
    await log_in(page, console)
    answers: list[tuple[int, str]] = []

    async def record(response: Response) -> None:
        if response.url.endswith("/console/api/subscriptions") and response.request.method == "POST":
            answers.append((response.status, orjson.loads(await response.body())["error"]))

    page.on("response", record)
    # another site (localhost is not 127.0.0.1 to the browser): the SameSite=Strict cookie stays home
    await page.goto(f"http://localhost:{attacker}/")
    await page.wait_for_url(f"{console.base}/console/api/subscriptions")
    # the same site on another port, which SameSite lets the cookie go to: the origin check refuses it
    await page.goto(f"http://127.0.0.1:{attacker}/")
    await page.wait_for_url(f"{console.base}/console/api/subscriptions")
    await page.wait_for_timeout(500)
    assert [status for status, _ in answers] == [401, 403], answers
    assert "log in" in answers[0][1] and "cross-origin" in answers[1][1]
    assert not [s for s in await subscriptions_of_the_api(console) if "stolen" in str(s["url"])]
