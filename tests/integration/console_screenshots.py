"""The README's screenshots of the console's three views, on the demo's data, in the browser the
browser tests use:

    python -m tests.integration.console_screenshots [--out intent/console/screenshots]

It starts the embedded broker and a worker, subscribes the demo's receiver and, so that the live view
has webhook failures to show, an endpoint that is down, sends the demo's shoppers (the coffee -> tea
-> cold story and three malformed events among them), then logs in and photographs Live, the story
shopper and Subscriptions. The PNGs are not in the wheel (`pyproject.toml`).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web
from playwright.async_api import async_playwright

from intent.broker import EmbeddedBroker, free_port
from intent.demo import DemoReceiver, demo_events, receiver_app, subscribe
from intent.kafka import wait_for_lag_zero
from intent.replay import replay
from intent.settings import PACKAGE_DIR
from tests.conftest import CHROMIUM
from tests.integration.conftest import API_TOKEN, Deployment, new_deployment
from tests.integration.console import CONSOLE_START_SECONDS, wait_for_console
from tests.integration.test_stream import STORY_SHOPPER

SHOPPERS = 60  # as `intent demo`
VIEWPORT = {"width": 1400, "height": 1000}


async def photograph(deployment: Deployment, out: Path) -> None:
    base = f"http://127.0.0.1:{deployment.web_ports[0]}"
    await wait_for_console(base)
    receiver = DemoReceiver()
    runner = web.AppRunner(receiver_app(receiver), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        subscription = await subscribe(base, API_TOKEN, f"http://127.0.0.1:{port}/hooks", CONSOLE_START_SECONDS)
        receiver.secret = subscription["secret"]
        down = {"url": f"http://127.0.0.1:{free_port()}/down", "intents": ["cold_flu_care"], "description": "down"}
        bearer = {"Authorization": f"Bearer {API_TOKEN}"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{base}/v1/subscriptions", json=down, headers=bearer) as answer,
        ):
            assert answer.status == 201, await answer.text()
        bootstrap = deployment.broker.bootstrap_servers
        await replay(demo_events(SHOPPERS), bootstrap, deployment.events_topic)
        for topic in (deployment.events_topic, deployment.changes_topic):
            await wait_for_lag_zero(bootstrap, deployment.app_id, topic, CONSOLE_START_SECONDS)
        await asyncio.sleep(8)  # the second attempt to the endpoint that is down (the schedule's 5 s)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = await browser.new_page(viewport=VIEWPORT)
            await page.goto(f"{base}/console/")
            await page.fill("#token", API_TOKEN)
            await page.click("#login-form button[type=submit]")
            await page.wait_for_selector("#live-status:has-text('live')")
            await page.wait_for_selector("#live-webhook-failures tbody tr td .badge")
            await page.screenshot(path=out / "live.png", full_page=True)
            await page.goto(f"{base}/console/#/shopper/{STORY_SHOPPER}")
            await page.wait_for_selector("#shopper-result:not([hidden])")
            await page.screenshot(path=out / "shopper.png", full_page=True)
            await page.goto(f"{base}/console/#/subscriptions")
            await page.wait_for_selector("#subscription-list .outcomes .badge")
            await page.screenshot(path=out / "subscriptions.png", full_page=True)
            await browser.close()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR / "console" / "screenshots")
    arguments = parser.parse_args()
    arguments.out.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(port=free_port()) as broker, tempfile.TemporaryDirectory() as root:
        deployment = new_deployment(broker, Path(root))
        deployment.start_worker(INTENT_HOLDOUT_SHARE="0.1")  # the demo's (the tests' deployments have none)
        try:
            asyncio.run(photograph(deployment, arguments.out))
        finally:
            deployment.stop_all()
    print(f"wrote {', '.join(sorted(p.name for p in arguments.out.glob('*.png')))} to {arguments.out}")


if __name__ == "__main__":
    main()
