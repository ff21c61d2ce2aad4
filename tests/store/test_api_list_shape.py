"""``GET /v1/adapters`` answers without FastAPI validating the page against ``AdapterList``
(``schemas.common.json_answer``: validation was a quarter of a list page's CPU). That is
only right while ``adapter_out`` builds exactly the validated shape, on both backends, from
column rows as from entities; these tests hold it so, and hold the request metrics of the
plain ASGI middleware that replaced ``BaseHTTPMiddleware``."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry
from support.metrics_reference import requests_counted
from support.tiny import tiny_hf_config

from store.api.schemas.adapters import AdapterList, AdapterOut

BASE = "meta/tiny"


def _seed(reg: LiveRegistry, tmp_path: Path) -> list[dict]:
    reg.admin.register_base_model(BASE, tiny_hf_config())
    reg.admin.create_namespace("acme", approval_policy="auto")
    reg.admin.create_namespace("bank", approval_policy="manual")
    uploaded = []
    for seed, (ns, name, version) in enumerate(
        [("acme", "chat", "1.0.0"), ("acme", "chat", "1.1.0-rc.1"), ("bank", "risk", "2.0.0")]
    ):
        src = write_hf_peft(random_adapter(seed=seed, rank=4), tmp_path / f"ad{seed}")
        uploaded.append(
            reg.admin.upload_adapter(
                src,
                namespace=ns,
                name=name,
                version=version,
                base_model=BASE,
                provenance={
                    "job_id": f"job-{seed}",
                    "dataset": "s3://data/é",
                    "hyperparameters": {"lr": 2e-4, "epochs": seed},
                    "metrics": {"eval_loss": 1.25 + seed},
                },
                description=None if seed == 1 else f"version {seed}",
            )
        )
    reg.admin.update_adapter(uploaded[0]["id"], custom_fields={"owner": "ml", "tags": [1, None]})
    return uploaded


def test_a_list_page_is_exactly_what_validating_it_would_answer(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    uploaded = _seed(live_registry, tmp_path)
    for params in ({}, {"namespace": "acme", "sort": "name"}, {"status": "pending"}):
        page = live_registry.admin.list_adapters(**params)
        assert page["data"], params
        # Validated and dumped again, a page comes out unchanged: no field missing (a default
        # filled in), none of another type (a coercion), no extra left out.
        assert AdapterList.model_validate(page).model_dump(mode="json") == page
        for item in page["data"]:
            assert item["manifest"] is None and item["files"] is None  # lists stay light
            entity = live_registry.admin.get_adapter(item["id"])
            assert AdapterOut.model_validate(entity).model_dump(mode="json") == entity
            # The entity (validated by FastAPI) and the list item agree on every field the
            # list carries; only the manifest and the files are the entity's alone.
            assert {k: v for k, v in entity.items() if k not in ("manifest", "files")} == {
                k: v for k, v in item.items() if k not in ("manifest", "files")
            }
            assert entity["manifest"] and entity["files"]
    listed = {a["id"]: a for a in live_registry.admin.list_adapters()["data"]}
    first = listed[uploaded[0]["id"]]
    assert first["custom_fields"] == {"owner": "ml", "tags": [1, None]}
    assert first["provenance"]["metrics"] == {"eval_loss": 1.25}
    assert first["coordinates"] == "acme/chat@1.0.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", first["created_at"])
    assert listed[uploaded[1]["id"]]["description"] is None
    assert listed[uploaded[2]["id"]]["status"] == "pending"


def test_request_metrics_name_the_route_template_and_the_status(
    live_registry: LiveRegistry,
) -> None:
    base = live_registry.base_url
    headers = {"Authorization": f"Bearer {live_registry.admin_token}"}
    assert httpx.get(f"{base}/v1/adapters", headers=headers).status_code == 200
    assert httpx.get(f"{base}/v1/adapters/ad_missing", headers=headers).status_code == 404
    assert httpx.get(f"{base}/v1/adapters").status_code == 401
    assert httpx.get(f"{base}/no/such/path").status_code == 404
    text = httpx.get(f"{base}/metrics").text
    assert requests_counted(text, "GET", "/v1/adapters", "200") >= 1
    assert requests_counted(text, "GET", "/v1/adapters/{adapter_id}", "404") >= 1
    assert requests_counted(text, "GET", "/v1/adapters", "401") >= 1
    assert requests_counted(text, "GET", "unmatched", "404") >= 1
