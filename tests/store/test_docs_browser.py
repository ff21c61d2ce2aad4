"""The registry's ``/docs`` in a real browser (headless Chromium through Playwright), with
every request that leaves the registry refused: Swagger UI must render from the registry's
own assets (air-gapped), list every route, and offer the bearer Authorize button."""

from __future__ import annotations

import shutil
from urllib.parse import urlsplit

import httpx
import pytest
from support.live_api import LiveRegistry

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The flags the machine's own probe uses: no background connections to Google's hosts.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is not installed (.ci/run installs Debian's chromium)"
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def test_swagger_ui_renders_air_gapped_with_every_route_and_authorize(
    live_registry: LiveRegistry, browser
) -> None:  # type: ignore[no-untyped-def]
    own = urlsplit(live_registry.base_url).netloc
    foreign: list[str] = []
    failed: list[str] = []
    page = browser.new_page()

    def only_the_registry(route) -> None:  # type: ignore[no-untyped-def]
        if urlsplit(route.request.url).netloc == own:
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_registry)
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(f"{live_registry.base_url}/docs", wait_until="networkidle")
    page.wait_for_selector(".opblock", timeout=20_000)

    paths = {
        p.inner_text().replace("\u200b", "") for p in page.locator(".opblock-summary-path").all()
    }
    schema = httpx.get(f"{live_registry.base_url}/openapi.json").json()
    assert paths == set(schema["paths"]), "Swagger UI lists other routes than the schema"
    assert page.locator("button.authorize").count() == 1
    page.locator("button.authorize").click()
    assert page.locator(".auth-container").filter(has_text="bearer").count() >= 1
    assert foreign == [] and failed == [], (foreign, failed)
    page.close()
