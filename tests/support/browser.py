"""Headless Chromium for page tests: Debian's ``/usr/bin/chromium`` driven by Playwright
(nothing is downloaded), with no background connections to Google's hosts."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium() -> Iterator[Any]:
    """A launched headless browser (``playwright.sync_api.Browser``), closed afterwards."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is not installed (.ci/run installs Debian's chromium)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def only_from(page: Any, base_url: str, foreign: list[str]) -> None:
    """Let ``page`` reach ``base_url``'s host only: every other request is aborted and its
    URL appended to ``foreign`` (the page must work air-gapped)."""
    own = urlsplit(base_url).netloc

    def route(request_route: Any) -> None:
        if urlsplit(request_route.request.url).netloc == own:
            request_route.continue_()
        else:
            foreign.append(request_route.request.url)
            request_route.abort()

    page.route("**/*", route)
