"""The review console at ``/ui`` in a real browser (headless Chromium through Playwright)
against a live registry: sign in, filter, review a pending version (metrics chart, the
comparison with the ready version), approve it and see the fleet generation; a reader gets
no approve button and a forged POST is refused; another tenant's version is the missing
one's 404 page; a cross-site POST and a POST without the CSRF token are refused. Every
request the pages make stays on the registry (no external asset). Archiving a version an
alias routes to is refused naming the alias unless the form's drop box is ticked (plain
HTTP through the console's forms)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.browser import chromium, only_from
from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry, fresh_database, serve_registry
from support.tiny import tiny_hf_config

BASE = "meta/tiny"
# Set to a directory (docs/) to keep the screenshots the README shows.
SHOTS = os.environ.get("LORAFLEET_CONSOLE_SHOTS")


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    with chromium() as launched:
        yield launched


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[LiveRegistry]:
    with fresh_database("sqlite", tmp_path) as url, serve_registry(url, tmp_path) as live:
        yield live


def _upload(reg: LiveRegistry, tmp_path: Path, ns: str, version: str, seed: int, **prov):
    src = write_hf_peft(random_adapter(seed=seed), tmp_path / f"{ns}-{version}")
    return reg.admin.upload_adapter(
        src, namespace=ns, name="support-bot", version=version, base_model=BASE, provenance=prov
    )


@pytest.fixture
def fleet(registry: LiveRegistry, tmp_path: Path) -> dict:
    """bank/support-bot 1.0.0 ready, 1.1.0 and 1.2.0 pending; other/support-bot pending."""
    registry.admin.register_base_model(BASE, tiny_hf_config())
    registry.admin.create_namespace("bank", approval_policy="manual")
    registry.admin.create_namespace("other", approval_policy="manual")
    old = _upload(registry, tmp_path, "bank", "1.0.0", 1, metrics={"eval_loss": 0.62})
    registry.admin.set_status(old["id"], "ready", reason="baseline")
    new = _upload(
        registry,
        tmp_path,
        "bank",
        "1.1.0",
        2,
        job_id="job-42",
        dataset="tickets-2026-11",
        hyperparameters={"lr": 0.0002, "epochs": 3},
        metrics={"train_loss": [2.1, 1.4, 0.9, 0.7, 0.55], "eval_loss": 0.48},
    )
    later = _upload(registry, tmp_path, "bank", "1.2.0", 3, metrics={"eval_loss": 0.5})
    foreign = _upload(registry, tmp_path, "other", "1.0.0", 4)
    return {
        "old": old,
        "new": new,
        "later": later,
        "foreign": foreign,
        "writer": registry.mint("writer", "bank", "reviewer"),
        "reader": registry.mint("reader", "bank", "auditor"),
    }


def _page(browser, reg: LiveRegistry, foreign: list[str]):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    only_from(page, reg.base_url, foreign)
    return context, page


def _sign_in(page, reg: LiveRegistry, token: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{reg.base_url}/ui")
    assert page.url.endswith("/ui/login")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    assert page.url.endswith("/ui/queue"), page.content()


def test_a_reviewer_filters_compares_and_approves(
    registry: LiveRegistry, fleet: dict, browser, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    foreign: list[str] = []
    context, page = _page(browser, registry, foreign)
    _sign_in(page, registry, fleet["writer"])
    cookie = next(c for c in context.cookies() if c["name"] == "lf_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    queue = page.locator("#queue tbody tr")
    assert [r.locator("a").inner_text() for r in queue.all()] == [
        "bank/support-bot@1.1.0",  # oldest first; other tenants' versions are not listed
        "bank/support-bot@1.2.0",
    ]
    assert queue.first.locator(".age").inner_text().endswith(("s", "m"))
    page.screenshot(path=str(tmp_path / "queue.png"), full_page=True)

    page.click("text=Adapters")
    page.select_option("select[name=status]", "pending")
    page.fill("input[name=search]", "support")
    page.click("form.filters button")
    assert "status=pending" in page.url
    listed = [a.inner_text() for a in page.locator("#adapters tbody a").all()]
    assert listed == ["bank/support-bot@1.2.0", "bank/support-bot@1.1.0"]

    page.click("text=bank/support-bot@1.1.0")
    assert page.locator("#status").inner_text() == "pending"
    assert page.locator("#metrics svg polyline").count() == 1
    assert "train_loss: 2.1 → 0.55" in page.locator("#metrics").inner_text()
    compare = page.locator("#compare").inner_text()
    assert "ready (1.0.0)" in compare and "0.48" in compare and "0.62" in compare
    assert "[4, " in page.locator("#validation").inner_text()
    assert "job-42" in page.inner_text("body") and "tickets-2026-11" in page.inner_text("body")
    assert page.locator("#files code").count() >= 2
    page.screenshot(path=str(tmp_path / "version.png"), full_page=True)
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.goto(f"{registry.base_url}/ui/queue")
        page.screenshot(path=str(Path(SHOTS) / "console-queue.png"), full_page=True)
        page.go_back()
        page.screenshot(path=str(Path(SHOTS) / "console-version.png"), full_page=True)

    page.fill("#review input[name=reason]", "eval loss 0.48 beats 0.62")
    page.click("#review button.approve")
    entity = registry.admin.get_adapter(fleet["new"]["id"])
    assert entity["status"] == "ready" and entity["generation"] > 0
    flash = page.locator(".flash").inner_text()
    assert flash == (
        f"bank/support-bot@1.1.0 approved: now ready, fleet generation {entity['generation']}"
    )
    assert page.locator("#status").inner_text() == "ready"
    assert (
        f"fleet generation {entity['generation']}" in page.locator("#fleet-generation").inner_text()
    )
    history = page.locator("#history").inner_text()
    assert "eval loss 0.48 beats 0.62" in history and "token:reviewer@bank" in history
    assert (tmp_path / "queue.png").stat().st_size > 1000
    assert (tmp_path / "version.png").stat().st_size > 1000

    page.click("text=Audit log")
    page.fill("input[name=action]", "adapter.ready")
    page.click("form.filters button")
    rows = [r.inner_text() for r in page.locator("#audit tbody tr").all()]
    assert len(rows) == 2  # newest first: this approval, then the baseline's
    assert "token:reviewer@bank" in rows[0] and fleet["new"]["id"] in rows[0]
    assert "admin" in rows[1] and fleet["old"]["id"] in rows[1]
    page.click("button:has-text('Sign out')")
    assert page.url.endswith("/ui/login")
    page.goto(f"{registry.base_url}/ui/queue")
    assert page.url.endswith("/ui/login")
    assert foreign == []
    context.close()


def test_a_reader_sees_no_approve_button_and_a_forged_post_is_refused(
    registry: LiveRegistry, fleet: dict, browser
) -> None:  # type: ignore[no-untyped-def]
    foreign: list[str] = []
    context, page = _page(browser, registry, foreign)
    _sign_in(page, registry, fleet["reader"])
    target = fleet["later"]["id"]
    page.goto(f"{registry.base_url}/ui/adapters/{target}")
    assert page.locator("#status").inner_text() == "pending"
    assert page.locator("button.approve").count() == 0
    csrf = page.locator("form.signout input[name=csrf]").get_attribute("value")
    forged = context.request.post(
        f"{registry.base_url}/ui/adapters/{target}/status",
        form={"to": "ready", "reason": "me", "csrf": csrf},
        max_redirects=0,
    )
    assert forged.status == 403 and "needs writer" in forged.text()
    assert registry.admin.get_adapter(target)["status"] == "pending"
    context.close()


def test_another_tenants_version_is_the_missing_ones_404_page(
    registry: LiveRegistry, fleet: dict, browser
) -> None:  # type: ignore[no-untyped-def]
    foreign: list[str] = []
    context, page = _page(browser, registry, foreign)
    _sign_in(page, registry, fleet["writer"])
    theirs_id, missing_id = fleet["foreign"]["id"], "ad_" + "0" * 32
    theirs = page.goto(f"{registry.base_url}/ui/adapters/{theirs_id}")
    theirs_text = page.inner_text("main").replace(theirs_id, "ID")
    missing = page.goto(f"{registry.base_url}/ui/adapters/{missing_id}")
    missing_text = page.inner_text("main").replace(missing_id, "ID")
    assert theirs.status == missing.status == 404
    assert theirs_text == missing_text and "not_found" in theirs_text
    context.close()


def test_cross_site_and_tokenless_posts_are_refused(
    registry: LiveRegistry, fleet: dict, browser
) -> None:  # type: ignore[no-untyped-def]
    foreign: list[str] = []
    context, page = _page(browser, registry, foreign)
    _sign_in(page, registry, fleet["writer"])
    target = fleet["later"]["id"]
    action = f"{registry.base_url}/ui/adapters/{target}/status"

    # Same browser, signed in: a POST that carries the session cookie but no CSRF token.
    tokenless = context.request.post(action, form={"to": "ready"}, max_redirects=0)
    assert tokenless.status == 403 and "CSRF" in tokenless.text()

    # Another site's page auto-submits a form at the console.
    evil = context.new_page()
    evil.route(
        "http://attacker.example/**",
        lambda route: route.fulfill(
            content_type="text/html",
            body=f'<form id="f" method="post" action="{action}">'
            '<input name="to" value="ready"></form>'
            "<script>document.getElementById('f').submit()</script>",
        ),
    )
    with evil.expect_navigation(url=action):
        evil.goto("http://attacker.example/")
    # SameSite=Strict: the session cookie does not go with another site's POST.
    assert "sign in first" in evil.inner_text("main")
    assert registry.admin.get_adapter(target)["status"] == "pending"
    context.close()


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html)[1]


def test_archiving_an_alias_target_is_refused_naming_the_alias_unless_dropped(
    registry: LiveRegistry, fleet: dict
) -> None:
    # The console's own forms over plain HTTP (no browser): sign in, post the archive form.
    old = fleet["old"]
    registry.admin.set_alias("bank", "support-bot", "stable", [("1.0.0", 100)])
    with httpx.Client(base_url=registry.base_url, timeout=30.0) as ui:
        login = ui.get("/ui/login")
        signed_in = ui.post("/ui/login", data={"token": fleet["writer"], "csrf": _csrf(login.text)})
        assert signed_in.status_code == 303, signed_in.text
        page = ui.get(f"/ui/adapters/{old['id']}")
        assert 'name="drop_from_aliases"' in page.text
        form = {"to": "archived", "reason": "retired", "csrf": _csrf(page.text)}
        refused = ui.post(f"/ui/adapters/{old['id']}/status", data=form)
        assert refused.status_code == 409
        assert "alias_target" in refused.text and "bank/support-bot@stable" in refused.text
        assert registry.admin.get_adapter(old["id"])["status"] == "ready"

        done = ui.post(
            f"/ui/adapters/{old['id']}/status", data={**form, "drop_from_aliases": "true"}
        )
        assert done.status_code == 303, done.text
    assert registry.admin.get_adapter(old["id"])["status"] == "archived"
    # Its only target left: the alias is gone, its history says why.
    assert registry.admin.list_aliases("bank", "support-bot")["data"] == []
    history = registry.admin.alias_history("bank", "support-bot", "stable")["data"]
    assert history[-1]["action"] == "delete"
    assert history[-1]["reason"] == "bank/support-bot@1.0.0 left ready"
