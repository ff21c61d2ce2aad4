"""The registry's write side: immutability, quotas, the status machine and its events."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from events.streams import REFRESH_STREAM, STATUS_STREAM
from store import registry
from store.approval import apply_transition
from store.audit import record_access
from store.catalog import get_adapter, get_base_model_spec, get_namespace
from store.errors import (
    AdapterInvalid,
    AlreadyExists,
    BadRequest,
    IllegalTransition,
    NotFound,
    QuotaExceeded,
    VersionConflict,
)
from store.models import AccessLog, AdapterFile, AdapterVersion, OutboxRow, Provenance
from store.outbox import current_generation, mark_sent, pending_outbox
from store.tenancy import NAMESPACE_FIELDS, create_namespace, register_base_model, update_namespace

PROV = Provenance(job_id="job-1", dataset="ds", hyperparameters={"lr": 1e-4}, metrics={"loss": 0.5})


def commit(session, package, ns, version="1.0.0", name="bot", base="tiny-llama"):
    """``commit_version`` as one unit of work (the service only flushes)."""
    result = registry.commit_version(
        session,
        package,
        namespace=ns,
        name=name,
        version=version,
        base_model=base,
        provenance=PROV,
        actor="trainer",
    )
    session.commit()
    return result


def outbox(session: Session, stream: str) -> list[dict]:
    rows = session.execute(
        sa.select(OutboxRow).where(OutboxRow.stream == stream).order_by(OutboxRow.id)
    ).scalars()
    return [json.loads(r.payload) for r in rows]


def test_auto_namespace_registers_ready_with_load_event(session, auto_ns, base_model, make_package):
    version, created = commit(session, make_package(1), auto_ns)
    assert created and version.status == "ready"
    assert version.id.startswith("ad_") and len(version.id) == 35
    assert version.generation == 1 == current_generation(session)
    loads = outbox(session, REFRESH_STREAM)
    assert [(e["action"], e["adapter_id"], e["generation"]) for e in loads] == [
        ("load", version.id, 1)
    ]
    assert loads[0]["adapter"] == "acme/bot@1.0.0"
    steps = [(e["from_status"], e["to_status"]) for e in outbox(session, STATUS_STREAM)]
    assert steps == [("validating", "pending"), ("pending", "ready")]
    files = session.execute(sa.select(AdapterFile).where(AdapterFile.adapter_id == version.id))
    assert {f.role for f in files.scalars()} == {"original", "canonical"}


def test_manual_namespace_waits_in_pending_until_approved(
    session, manual_ns, base_model, make_package
):
    version, _ = commit(session, make_package(1), manual_ns)
    assert version.status == "pending" and current_generation(session) == 0
    assert outbox(session, REFRESH_STREAM) == []
    approved = registry.approve(session, version.id, actor="reviewer", reason="looks good")
    assert approved.status == "ready" and approved.generation == 1
    assert approved.updated_by == "reviewer" and approved.status_reason == "looks good"
    archived = registry.archive(session, version.id, actor="reviewer")
    assert archived.status == "archived" and archived.generation == 2
    assert [(e["action"], e["generation"]) for e in outbox(session, REFRESH_STREAM)] == [
        ("load", 1),
        ("evict", 2),
    ]


def test_same_bytes_is_idempotent(session, auto_ns, base_model, make_package):
    first, created = commit(session, make_package(1), auto_ns)
    again, created_again = commit(session, make_package(1), auto_ns)
    assert created and not created_again and again.id == first.id
    assert session.execute(sa.select(sa.func.count()).select_from(AdapterVersion)).scalar() == 1
    assert current_generation(session) == 1  # no second load event


def test_different_bytes_is_a_version_conflict(session, auto_ns, base_model, make_package):
    first, _ = commit(session, make_package(1), auto_ns)
    with pytest.raises(VersionConflict) as info:
        commit(session, make_package(2), auto_ns)
    assert info.value.code == "version_conflict" and info.value.http_status == 409
    session.rollback()
    assert get_adapter(session, first.id).content_sha256 == make_package(1).content_sha256


def test_failed_version_is_replaced_by_fixed_bytes(session, auto_ns, base_model, make_package):
    failed = registry.record_failure(
        session,
        namespace=auto_ns,
        name="bot",
        version="1.0.0",
        base_model=base_model,
        code="shape_mismatch",
        message="q_proj B is [8, 4]",
        provenance=PROV,
        actor="worker",
    )
    assert failed.status == "failed" and failed.status_code == "shape_mismatch"
    again = registry.record_failure(
        session,
        namespace=auto_ns,
        name="bot",
        version="1.0.0",
        base_model=base_model,
        code="bad_safetensors",
        message="truncated",
        provenance=PROV,
        actor="worker",
    )
    assert again.id == failed.id and again.status_code == "bad_safetensors"
    fixed, created = commit(session, make_package(1), auto_ns)
    assert created and fixed.status == "ready" and fixed.id != failed.id
    with pytest.raises(NotFound):
        get_adapter(session, failed.id)
    with pytest.raises(VersionConflict):
        registry.record_failure(
            session,
            namespace=auto_ns,
            name="bot",
            version="1.0.0",
            base_model=base_model,
            code="x",
            message="y",
            provenance=PROV,
            actor="worker",
        )


def test_quota_on_versions_and_bytes(session, base_model, make_package):
    create_namespace(
        session, "small", approval_policy="auto", max_versions=2, max_bytes=1000, actor="admin"
    )
    commit(session, make_package(1, size=100), "small", "1.0.0")
    with pytest.raises(QuotaExceeded, match="bytes"):
        commit(session, make_package(2, size=900), "small", "2.0.0")
    session.rollback()
    commit(session, make_package(3, size=100), "small", "3.0.0")
    with pytest.raises(QuotaExceeded, match="versions") as info:
        commit(session, make_package(4, size=1), "small", "4.0.0")
    assert info.value.http_status == 413
    session.rollback()
    update_namespace(session, "small", max_versions=3, actor="admin")
    assert commit(session, make_package(4, size=1), "small", "4.0.0")[1]


def test_illegal_transitions_are_409(session, manual_ns, base_model, make_package):
    version, _ = commit(session, make_package(1), manual_ns)
    with pytest.raises(IllegalTransition) as info:
        registry.archive(session, version.id, actor="x")  # pending -> archived
    assert info.value.http_status == 409
    session.rollback()
    registry.reject(session, version.id, actor="x", reason="bad eval")
    session.commit()
    for target in ("ready", "pending", "archived", "validating"):
        with pytest.raises(IllegalTransition):
            registry.transition(session, version.id, target, actor="x")
        session.rollback()
    assert get_adapter(session, version.id).status == "rejected"
    with pytest.raises(BadRequest):
        registry.transition(session, version.id, "deployed", actor="x")
    with pytest.raises(NotFound):
        registry.approve(session, "ad_" + "0" * 32, actor="x")


def test_lost_race_is_illegal_transition_and_writes_nothing(
    engine: Engine, manual_ns, base_model, make_package, session
):
    version, _ = commit(session, make_package(1), manual_ns)
    with Session(engine, expire_on_commit=False) as a, Session(engine) as b:
        seen_by_a = get_adapter(a, version.id)
        assert seen_by_a.status == "pending"
        a.commit()  # end a's read transaction; a still holds its (soon stale) copy
        registry.approve(b, version.id, actor="b")
        b.commit()
        with pytest.raises(IllegalTransition, match="changed concurrently"):
            apply_transition(a, seen_by_a, "rejected", actor="a")
        a.rollback()
    session.expire_all()
    assert get_adapter(session, version.id).status == "ready"
    steps = [e["to_status"] for e in outbox(session, STATUS_STREAM)]
    assert steps.count("ready") == 1 and "rejected" not in steps
    assert current_generation(session) == 1


def test_concurrent_approvals_one_wins(
    engine: Engine, manual_ns, base_model, make_package, session
):
    version, _ = commit(session, make_package(1), manual_ns)
    barrier = threading.Barrier(4)

    def approve_once(i: int) -> str:
        with Session(engine) as s:
            seen = get_adapter(s, version.id)
            barrier.wait()
            try:
                apply_transition(s, seen, "ready", actor=f"r{i}")
                s.commit()
                return "won"
            except IllegalTransition:
                s.rollback()
                return "lost"

    with ThreadPoolExecutor(4) as pool:
        outcomes = sorted(pool.map(approve_once, range(4)))
    assert outcomes == ["lost", "lost", "lost", "won"]
    assert current_generation(session) == 1
    assert len(outbox(session, REFRESH_STREAM)) == 1


def test_a_registration_rolled_back_by_its_caller_leaves_nothing(
    engine: Engine, auto_ns, base_model, make_package, session
):
    # The services only flush; their SAVEPOINT must stay inside the caller's transaction
    # (on SQLite too, where the driver would let a first SAVEPOINT's RELEASE commit).
    commit(session, make_package(1), auto_ns, version="1.0.0")
    with Session(engine) as s:
        registry.commit_version(
            s,
            make_package(2),
            namespace=auto_ns,
            name="bot",
            version="2.0.0",
            base_model=base_model,
            provenance=PROV,
            actor="trainer",
        )
        s.rollback()
    session.expire_all()
    versions = session.execute(sa.select(AdapterVersion.version)).scalars().all()
    assert versions == ["1.0.0"]
    assert current_generation(session) == 1


def test_a_lost_insert_race_rolls_back_the_savepoint_only(
    engine: Engine, auto_ns, base_model, make_package, session, monkeypatch
):
    winner, _ = commit(session, make_package(1), auto_ns)
    real_find = registry._find
    calls = []

    def find_after_the_race(*args, **kwargs):
        calls.append(1)  # the first look-up ran before the winner committed
        return None if len(calls) == 1 else real_find(*args, **kwargs)

    monkeypatch.setattr(registry, "_find", find_after_the_race)
    with Session(engine, expire_on_commit=False) as s:
        record_access(s, actor="trainer", action="adapter.upload", outcome="ok")
        again, created = commit(s, make_package(1), auto_ns)
    assert (again.id, created) == (winner.id, False) and len(calls) == 2
    session.expire_all()
    assert session.execute(sa.select(sa.func.count()).select_from(AccessLog)).scalar() == 1
    assert session.execute(sa.select(sa.func.count()).select_from(AdapterVersion)).scalar() == 1


def test_purge_of_ready_version_evicts(session, auto_ns, base_model, make_package):
    version, _ = commit(session, make_package(1), auto_ns)
    registry.purge(session, version.id, actor="admin")
    with pytest.raises(NotFound):
        get_adapter(session, version.id)
    assert session.execute(sa.select(sa.func.count()).select_from(AdapterFile)).scalar() == 0
    assert [(e["action"], e["generation"]) for e in outbox(session, REFRESH_STREAM)] == [
        ("load", 1),
        ("evict", 2),
    ]
    # The coordinates are free again.
    assert commit(session, make_package(2), auto_ns)[1]


def test_namespaces_and_base_models(session, base_model):
    create_namespace(session, "team-a", actor="admin")
    with pytest.raises(AlreadyExists):
        create_namespace(session, "team-a", actor="admin")
    for bad in (
        {"name": "Bad/NS"},
        {"name": "ok", "approval_policy": "maybe"},
        {"name": "ok2", "max_bytes": -1},
    ):
        with pytest.raises(BadRequest):
            create_namespace(session, **bad, actor="admin")
    with pytest.raises(BadRequest):
        update_namespace(session, "team-a", owner="me", actor="admin")
    assert (
        update_namespace(session, "team-a", approval_policy="manual", actor="a").approval_policy
        == "manual"
    )
    spec = get_base_model_spec(session, base_model)
    assert spec.hidden_size == 64 and spec.num_kv_heads == 2
    from support.tiny import tiny_hf_config

    assert register_base_model(session, base_model, tiny_hf_config(), actor="a").name == base_model
    with pytest.raises(AlreadyExists):
        register_base_model(session, base_model, tiny_hf_config(hidden_size=128), actor="a")
    with pytest.raises(AdapterInvalid) as info:
        get_base_model_spec(session, "nope")
    assert info.value.code == "unknown_base_model"


def test_unknown_base_model_or_namespace_is_refused(session, auto_ns, base_model, make_package):
    with pytest.raises(AdapterInvalid) as info:
        commit(session, make_package(1), auto_ns, base="gpt-9")
    assert info.value.code == "unknown_base_model"
    session.rollback()
    with pytest.raises(NotFound):
        commit(session, make_package(1), "ghost")
    session.rollback()
    with pytest.raises(BadRequest):
        commit(session, make_package(1), auto_ns, version="v1")


def test_outbox_pending_and_mark_sent(session, auto_ns, base_model, make_package):
    commit(session, make_package(1), auto_ns)
    rows = pending_outbox(session, 10)
    assert [r.stream for r in rows] == [STATUS_STREAM, STATUS_STREAM, REFRESH_STREAM]
    mark_sent(session, [rows[0].id, rows[1].id])
    left = pending_outbox(session, 10)
    assert [r.id for r in left] == [rows[2].id]
    session.commit()


def test_record_access(session):
    entry = record_access(
        session,
        actor="tok:ci",
        action="adapter.approve",
        outcome="denied",
        namespace="acme",
        target="ad_x",
        remote_addr="10.0.0.1",
    )
    assert entry.id is not None and entry.at.tzinfo is not None


def _validating_row(session: Session, ns: str) -> AdapterVersion:
    row = AdapterVersion(
        id="ad_" + "ab" * 16,
        namespace=ns,
        name="bot",
        version="1.0.0",
        base_model="tiny-llama",
        status="validating",
        created_by="t",
        updated_by="t",
    )
    session.add(row)
    session.commit()
    return row


def test_auto_policy_passes_validating_through_pending_to_ready(session, auto_ns, base_model):
    row = _validating_row(session, auto_ns)
    version = registry.transition(session, row.id, "pending", actor="worker")
    assert version.status == "ready" and version.generation == 1
    steps = [(e["from_status"], e["to_status"]) for e in outbox(session, STATUS_STREAM)]
    assert steps == [("validating", "pending"), ("pending", "ready")]


def test_manual_policy_refuses_validating_to_ready(session, manual_ns, base_model):
    row = _validating_row(session, manual_ns)
    with pytest.raises(IllegalTransition, match="manual approval"):
        registry.transition(session, row.id, "ready", actor="worker")
    session.rollback()
    assert registry.transition(session, row.id, "pending", actor="worker").status == "pending"
    assert current_generation(session) == 0


@pytest.mark.parametrize("name", ["", "Acme", "a b", "-acme", "a/b", "x" * 64])
def test_malformed_namespace_name_is_400_naming_the_name(session, name):
    with pytest.raises(BadRequest, match="invalid namespace name") as err:
        create_namespace(session, name, actor="admin")
    assert repr(name) in err.value.message and "@" not in err.value.message


def test_update_of_a_missing_namespace_is_not_found_before_any_change_is_judged(session):
    for changes in ({"approval_policy": None}, {"approval_policy": "maybe"}, {"owner": "me"}):
        with pytest.raises(NotFound):
            update_namespace(session, "nope", actor="admin", **changes)


def test_null_approval_policy_is_a_precise_bad_request(session):
    create_namespace(session, "team-n", approval_policy="manual", actor="admin")
    session.commit()
    with pytest.raises(BadRequest) as info:
        update_namespace(session, "team-n", approval_policy=None, actor="admin")
    assert "approval_policy cannot be null" in info.value.message
    session.rollback()
    assert get_namespace(session, "team-n").approval_policy == "manual"
    cleared = update_namespace(session, "team-n", max_bytes=None, actor="admin")
    assert cleared.max_bytes is None


def test_each_name_has_one_home_and_the_registry_re_exports_none() -> None:
    from store import audit, blobs, outbox, packaging, quotas, tenancy

    homes = {
        packaging: ("prepare_package", "content_digest"),
        tenancy: ("create_namespace", "update_namespace", "register_base_model"),
        outbox: (
            "enqueue",
            "announce_status",
            "announce_refresh",
            "next_generation",
            "current_generation",
            "pending_outbox",
            "mark_sent",
        ),
        audit: ("record_access",),
        blobs: ("referenced_blob_keys", "run_blob_gc"),
        quotas: ("check_quota_value", "lock_namespace", "enforce_quota"),
    }
    for module, names in homes.items():
        for name in names:
            assert getattr(module, name).__module__ == module.__name__, name
            if module is not outbox:  # the registry writes events through the outbox
                assert not hasattr(registry, name), name
            assert name not in registry.__all__, name
    assert not hasattr(registry, "NAMESPACE_FIELDS")
    assert tenancy.NAMESPACE_FIELDS == NAMESPACE_FIELDS


def test_byte_quota_counts_each_distinct_blob_once(session, base_model):
    from dataclasses import replace

    from store.models import Package, PackageFile

    def package(seed: int, version_bytes: int = 100) -> Package:
        # An HF PEFT upload whose canonical weights are byte-identical to the original.
        digest = f"{seed:064x}"
        same = [
            PackageFile("adapter_model.safetensors", role, digest, version_bytes, f"sha256/{seed}")
            for role in ("original", "canonical")
        ]
        return Package(
            source_format="hf_peft",
            rank=4,
            alpha=8.0,
            target_modules=["q_proj"],
            files=tuple(same),
            manifest={"seed": seed},
            manifest_sha256=digest,
            content_sha256=f"{seed + 1:064x}",
        )

    create_namespace(session, "small", approval_policy="auto", max_bytes=150, actor="admin")
    # 100 distinct bytes, although two file rows of 100 each.
    commit(session, package(1), "small", "1.0.0")
    # The same blob under another version adds no bytes either.
    commit(session, replace(package(1), content_sha256=f"{99:064x}"), "small", "1.0.1")
    with pytest.raises(QuotaExceeded, match="holds 100 bytes; 100 more"):
        commit(session, package(2), "small", "2.0.0")


def test_adapter_names_are_lowercase_in_the_registry_and_in_events(
    session, auto_ns, base_model, make_package
):
    from pydantic import ValidationError

    from events.models import NAMESPACE_PATTERN, JobCompleted
    from store.api.schemas.catalog import NamespaceCreate

    with pytest.raises(BadRequest, match="invalid adapter name 'Bot'.*lowercase"):
        commit(session, make_package(1), auto_ns, name="Bot")
    with pytest.raises(ValidationError, match="invalid adapter name"):
        JobCompleted(
            job_id="j",
            namespace="acme",
            output_model="acme/Bot@1.0.0",
            base_model="tiny-llama",
            artifact_uri="file:///x",
        )
    pattern = NamespaceCreate.model_json_schema()["properties"]["name"]["pattern"]
    assert pattern == NAMESPACE_PATTERN  # one spelling, from events.models
