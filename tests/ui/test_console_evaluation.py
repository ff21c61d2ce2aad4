"""The console's version page shows a version's evaluation (issue 17) in a real browser: the
gate's outcome, each arm's loss / perplexity / exact match, every check, the eval set digest
and the engine build; a version without one shows no evaluation card."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session
from support.browser import chromium, only_from
from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry, fresh_database, serve_registry
from support.tiny import tiny_hf_config

from store import catalog
from store.evaluation import record_evaluation

BASE = "meta/tiny"
EVALUATION = {
    "eval_set": {"id": "es_1", "name": "math", "sha256": "ab" * 32},
    "comparison": {"adapter_id": "ad_x", "coordinates": "bank/bot@1.0.0", "chosen_by": "latest"},
    "scores": {
        "candidate": {"loss": 2.5, "perplexity": 12.18, "exact_match": 0.0, "rows": 3},
        "base": {"loss": 7.25, "perplexity": 1408.1, "exact_match": 0.0, "rows": 3},
        "comparison": {"loss": 0.125, "perplexity": 1.13, "exact_match": 1.0, "rows": 3},
    },
    "checks": [
        {"rule": "min_exact_match", "passed": False, "detail": "exact match 0.000 >= 0.5"},
        {"rule": "max_loss_ratio", "passed": True, "detail": "loss 2.5000 <= 0.9 x base"},
    ],
    "passed": False,
    "policy": {"eval_set": "math", "metrics": ["loss", "exact_match"], "gate": {}},
    "engine_build": "lorafleet 0.1.0 torch 2.x cpu torch.float32 0123456789ab",
    "seconds": 1.5,
}


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[LiveRegistry]:
    with fresh_database("sqlite", tmp_path) as url, serve_registry(url, tmp_path) as live:
        yield live


def test_version_page_shows_the_scores_and_checks(registry: LiveRegistry, tmp_path: Path) -> None:
    registry.admin.register_base_model(BASE, tiny_hf_config())
    registry.admin.create_namespace("bank", approval_policy="manual")
    ids = []
    for version, seed in (("1.0.0", 1), ("1.1.0", 2)):
        src = write_hf_peft(random_adapter(seed=seed), tmp_path / version)
        entity = registry.admin.upload_adapter(
            src, namespace="bank", name="bot", version=version, base_model=BASE
        )
        ids.append(entity["id"])
    with Session(registry.engine) as session:
        record_evaluation(session, catalog.get_adapter(session, ids[1]), EVALUATION)
        session.commit()
    token = registry.mint("reader", "bank", "auditor")
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        only_from(page, registry.base_url, [])
        page.goto(f"{registry.base_url}/ui")
        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        page.goto(f"{registry.base_url}/ui/adapters/{ids[1]}")
        card = page.locator("#evaluation").inner_text()
        assert "failed" in card and "math" in card and "abababababab" in card
        assert "compared with bank/bot@1.0.0" in card
        candidate = page.locator("tr.arm-candidate").inner_text()
        assert "2.5000" in candidate and "12.18" in candidate and "0.000" in candidate
        assert "7.2500" in page.locator("tr.arm-base").inner_text()
        assert "1.000" in page.locator("tr.arm-comparison").inner_text()
        assert "min_exact_match: exact match 0.000 >= 0.5 — FAIL" in card
        assert "max_loss_ratio" in card and "0123456789ab" in card
        page.goto(f"{registry.base_url}/ui/adapters/{ids[0]}")
        assert page.locator("#evaluation").count() == 0
        context.close()


def test_version_page_html_carries_the_evaluation(registry: LiveRegistry, tmp_path: Path) -> None:
    """The same page over plain HTTP through the console's sign-in form (no browser)."""
    import re

    import httpx

    registry.admin.register_base_model(BASE, tiny_hf_config())
    registry.admin.create_namespace("bank", approval_policy="manual")
    src = write_hf_peft(random_adapter(seed=1), tmp_path / "v")
    entity = registry.admin.upload_adapter(
        src, namespace="bank", name="bot", version="1.0.0", base_model=BASE
    )
    with Session(registry.engine) as session:
        record_evaluation(session, catalog.get_adapter(session, entity["id"]), EVALUATION)
        session.commit()
    token = registry.mint("reader", "bank", "auditor")
    with httpx.Client(base_url=registry.base_url, timeout=30.0) as ui:
        login = ui.get("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)[1]
        assert ui.post("/ui/login", data={"token": token, "csrf": csrf}).status_code == 303
        html = ui.get(f"/ui/adapters/{entity['id']}").text
    assert 'id="evaluation"' in html and "2.5000" in html and "1408.10" in html
    assert "min_exact_match: exact match 0.000 &gt;= 0.5 — FAIL" in html
