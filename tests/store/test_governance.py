"""Governance over the live API on SQLite and PostgreSQL: four-eyes approval, the status
history, restore through the outbox, and the access log's filters and tenancy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import Session
from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry
from support.tiny import tiny_hf_config

from events.streams import REFRESH_STREAM
from store import registry
from store.errors import SelfApproval
from store.models import OutboxRow, Provenance

BASE = "meta/tiny"


def _setup(reg: LiveRegistry, ns: str = "bank", **settings) -> None:
    reg.admin.register_base_model(BASE, tiny_hf_config())
    reg.admin.create_namespace(ns, approval_policy="manual", **settings)


def _upload(reg: LiveRegistry, tmp_path: Path, token: str, *, seed: int = 0, version="1.0.0"):
    src = write_hf_peft(random_adapter(seed=seed), tmp_path / f"ad{seed}")
    with reg.client(token) as client:
        return client.upload_adapter(
            src, namespace="bank", name="bot", version=version, base_model=BASE
        )


def _patch(reg: LiveRegistry, token: str, adapter_id: str, **body) -> httpx.Response:
    with reg.http(token) as client:
        return client.patch(f"/v1/adapters/{adapter_id}", json=body)


def test_four_eyes_refuses_the_uploader_and_lets_another_writer_approve(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    _setup(live_registry, require_distinct_approver=True)
    alice = live_registry.mint("writer", "bank", "alice")
    bob = live_registry.mint("writer", "bank", "bob")
    entity = _upload(live_registry, tmp_path, alice)
    assert entity["status"] == "pending" and entity["created_by"] == "token:alice@bank"

    own = _patch(live_registry, alice, entity["id"], status="ready", reason="looks fine")
    assert own.status_code == 403, own.text
    assert own.json()["error"]["code"] == "self_approval"
    assert live_registry.admin.get_adapter(entity["id"])["status"] == "pending"

    other = _patch(live_registry, bob, entity["id"], status="ready", reason="second pair")
    assert other.status_code == 200, other.text
    assert other.json()["status"] == "ready" and other.json()["updated_by"] == "token:bob@bank"


def test_without_the_setting_the_uploader_may_approve(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    _setup(live_registry)
    alice = live_registry.mint("writer", "bank", "alice")
    entity = _upload(live_registry, tmp_path, alice)
    assert _patch(live_registry, alice, entity["id"], status="ready").status_code == 200


def test_four_eyes_covers_the_pipelines_own_uploads(
    live_registry: LiveRegistry, make_package
) -> None:
    _setup(live_registry, require_distinct_approver=True)
    with Session(live_registry.engine) as session:
        row, _ = registry.commit_version(
            session,
            make_package(1),
            namespace="bank",
            name="piped",
            version="1.0.0",
            base_model=BASE,
            provenance=Provenance(job_id="job-1"),
            actor="lorafleet-pipeline",
        )
        session.commit()
        adapter_id = row.id
        with pytest.raises(SelfApproval):
            registry.approve(session, adapter_id, actor="lorafleet-pipeline")
        session.rollback()
    approved = live_registry.admin.set_status(adapter_id, "ready", reason="human review")
    assert approved["status"] == "ready"


def test_four_eyes_needs_manual_approval(live_registry: LiveRegistry) -> None:
    live_registry.admin.register_base_model(BASE, tiny_hf_config())
    with live_registry.http(live_registry.admin_token) as client:
        bad = client.post(
            "/v1/namespaces",
            json={"name": "fast", "approval_policy": "auto", "require_distinct_approver": True},
        )
        assert bad.status_code == 400 and "manual" in bad.json()["error"]["message"]
        ok = client.post("/v1/namespaces", json={"name": "slow", "approval_policy": "manual"})
        assert ok.json()["require_distinct_approver"] is False
        on = client.patch("/v1/namespaces/slow", json={"require_distinct_approver": True})
        assert on.status_code == 200 and on.json()["require_distinct_approver"] is True
        auto = client.patch("/v1/namespaces/slow", json={"approval_policy": "auto"})
        assert auto.status_code == 400
        null = client.patch("/v1/namespaces/slow", json={"require_distinct_approver": None})
        assert null.status_code == 400


def test_history_lists_every_transition_with_actor_and_reason(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    _setup(live_registry)
    writer = live_registry.mint("writer", "bank", "wendy")
    entity = _upload(live_registry, tmp_path, writer)
    assert _patch(live_registry, writer, entity["id"], status="ready", reason="ok").is_success
    assert _patch(live_registry, writer, entity["id"], status="archived", reason="old").is_success
    with live_registry.http(live_registry.mint("reader", "bank", "rita")) as client:
        answer = client.get(f"/v1/adapters/{entity['id']}/history")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["uploaded_by"] == "token:wendy@bank" and body["status"] == "archived"
    steps = [(s["from_status"], s["to_status"], s["actor"], s["reason"]) for s in body["data"]]
    assert steps == [
        ("validating", "pending", "token:wendy@bank", "validated"),
        ("pending", "ready", "token:wendy@bank", "ok"),
        ("ready", "archived", "token:wendy@bank", "old"),
    ]
    generations = [s["generation"] for s in body["data"]]
    assert generations[0] is None and generations[2] > generations[1] > 0
    times = [datetime.fromisoformat(s["at"]) for s in body["data"]]
    assert times == sorted(times)


def test_restore_is_an_admins_and_goes_through_the_outbox(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    _setup(live_registry)
    writer = live_registry.mint("writer", "bank", "wendy")
    ns_admin = live_registry.mint("admin", "bank", "ada")
    entity = _upload(live_registry, tmp_path, writer)
    live_registry.admin.set_status(entity["id"], "ready")
    archived = live_registry.admin.set_status(entity["id"], "archived")
    url = f"/v1/adapters/{entity['id']}/restore"

    # A plain status change cannot bring it back, and a writer may not restore.
    back = _patch(live_registry, writer, entity["id"], status="ready")
    assert back.status_code == 409 and back.json()["error"]["code"] == "illegal_transition"
    assert "restore" in back.json()["error"]["message"]
    with live_registry.http(writer) as client:
        refused = client.post(url, json={"reason": "need it"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    with live_registry.http(ns_admin) as client:
        no_reason = client.post(url, json={})
        assert no_reason.status_code == 422
        restored = client.post(url, json={"reason": "regression in 1.1.0"})
        assert restored.status_code == 200, restored.text
        again = client.post(url, json={"reason": "twice"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "illegal_transition"
        history = client.get(f"/v1/adapters/{entity['id']}/history").json()["data"]
    body = restored.json()
    assert body["status"] == "ready" and body["generation"] > archived["generation"]
    assert history[-1]["from_status"] == "archived" and history[-1]["to_status"] == "ready"
    assert history[-1]["reason"] == "regression in 1.1.0"
    assert history[-1]["actor"] == "token:ada@bank"
    with Session(live_registry.engine) as session:
        payloads = session.execute(
            sa.select(OutboxRow.payload).where(OutboxRow.stream == REFRESH_STREAM)
        ).scalars()
        refreshes = [json.loads(p) for p in payloads]
    last = refreshes[-1]
    assert (last["action"], last["adapter_id"], last["generation"]) == (
        "load",
        entity["id"],
        body["generation"],
    )
    fleet = live_registry.admin.fleet(BASE)
    assert entity["id"] in [a["id"] for a in fleet["adapters"]]
    assert fleet["generation"] == body["generation"]


def test_audit_filters_pages_and_tenancy(live_registry: LiveRegistry, tmp_path: Path) -> None:
    _setup(live_registry)
    live_registry.admin.create_namespace("other", approval_policy="manual")
    writer = live_registry.mint("writer", "bank", "wendy")
    stranger = live_registry.mint("admin", "other", "olga")
    entity = _upload(live_registry, tmp_path, writer)
    _patch(live_registry, writer, entity["id"], status="ready", reason="fine")
    _patch(live_registry, writer, entity["id"], status="archived")
    start = datetime.now(UTC) - timedelta(hours=1)

    with live_registry.http(writer) as client:
        mine = client.get("/v1/audit", params={"adapter": entity["id"]}).json()
        actions = {row["action"] for row in mine["data"]}
        assert {"adapter.ready", "adapter.archived"} <= actions
        assert all(row["namespace"] == "bank" for row in mine["data"])
        only = client.get("/v1/audit", params={"action": "adapter.ready"}).json()
        assert [r["target"] for r in only["data"]] == [entity["id"]]
        paged = client.get("/v1/audit", params={"page_size": 1, "page": 2}).json()
        assert paged["pagination"]["total"] >= 3 and len(paged["data"]) == 1
        future = client.get("/v1/audit", params={"from": "2999-01-01T00:00:00Z"}).json()
        assert future["data"] == [] and future["pagination"]["total"] == 0
        window = client.get(
            "/v1/audit", params={"from": start.isoformat(), "actor": "token:wendy@bank"}
        ).json()
        assert window["pagination"]["total"] >= 2
        assert all(r["actor"] == "token:wendy@bank" for r in window["data"])
        other = client.get("/v1/audit", params={"namespace": "other"})
        missing = client.get("/v1/audit", params={"namespace": "nowhere"})
    assert other.status_code == missing.status_code == 404
    assert (
        other.json()["error"]["message"].replace("other", "nowhere")
        == (missing.json()["error"]["message"])
    )
    with live_registry.http(stranger) as client:
        theirs = client.get("/v1/audit", params={"adapter": entity["id"]}).json()
        history = client.get(f"/v1/adapters/{entity['id']}/history")
        nothing = client.get("/v1/adapters/ad_00000000000000000000000000000000/history")
    assert theirs["data"] == [] and theirs["pagination"]["total"] == 0
    assert history.status_code == 404
    assert history.json()["error"]["code"] == nothing.json()["error"]["code"] == "not_found"
    with live_registry.http(live_registry.admin_token) as client:
        everything = client.get("/v1/audit", params={"action": "namespace.create"}).json()
    assert {r["target"] for r in everything["data"]} == {"bank", "other"}
