"""The registry's ``/docs`` in a real browser (headless Chromium through Playwright), with
every request that leaves the registry refused: Swagger UI must render from the registry's
own assets (air-gapped), list every route, and offer the bearer Authorize button."""

from __future__ import annotations

import httpx
import pytest
from support.browser import chromium, only_from
from support.live_api import LiveRegistry


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    with chromium() as launched:
        yield launched


def test_swagger_ui_renders_air_gapped_with_every_route_and_authorize(
    live_registry: LiveRegistry, browser
) -> None:  # type: ignore[no-untyped-def]
    foreign: list[str] = []
    failed: list[str] = []
    page = browser.new_page()
    only_from(page, live_registry.base_url, foreign)
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
