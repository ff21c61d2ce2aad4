"""Registering real adapter files into a real blob store (filesystem and S3), and the blob
garbage collector."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from support.factories import random_adapter, write_hf_peft
from support.tiny import tiny_spec

from store import registry
from store.blobs import referenced_blob_keys, run_blob_gc
from store.catalog import list_files
from store.errors import AdapterInvalid, VersionConflict
from store.formats import ValidationLimits
from store.models import AdapterFile, Provenance

LIMITS = ValidationLimits()


def register(session, blobs, source: Path, version: str = "1.0.0"):
    """``register_adapter`` as one unit of work (the service only flushes)."""
    result = registry.register_adapter(
        session,
        blobs,
        namespace="acme",
        name="bot",
        version=version,
        base_model="tiny-llama",
        source_dir=source,
        provenance=Provenance(job_id="j1"),
        actor="trainer",
        limits=LIMITS,
    )
    session.commit()
    return result


def stored_keys(blobs) -> set[str]:
    return {key for key, _ in blobs.list_blobs()}


def test_register_stores_originals_and_canonical(
    session, blob_store, auto_ns, base_model, tmp_path
):
    source = write_hf_peft(random_adapter(tiny_spec(), rank=4, seed=1), tmp_path / "src")
    version, created = register(session, blob_store, source)
    assert created and version.status == "ready" and version.rank == 4
    files = list_files(session, version.id)
    assert {(f.role, f.path) for f in files} >= {
        ("original", "adapter_config.json"),
        ("canonical", "adapter_config.json"),
        ("canonical", "adapter_model.safetensors"),
    }
    assert stored_keys(blob_store) == {f.blob_key for f in files}
    for f in files:
        out = tmp_path / "dl" / f.role / f.path
        out.parent.mkdir(parents=True, exist_ok=True)
        blob_store.download(f.blob_key, out, f.sha256)  # verifies the digest
        assert out.stat().st_size == f.size
    manifest_files = version.manifest["files"]
    assert set(manifest_files) == {f.path for f in files if f.role == "canonical"}
    assert version.total_bytes == sum(f.size for f in files)
    # Same bytes again: idempotent, nothing new stored.
    again, created_again = register(session, blob_store, source)
    assert not created_again and again.id == version.id


def test_changed_bytes_conflict_and_gc_removes_only_old_orphans(
    session, blob_store, auto_ns, base_model, tmp_path
):
    first = write_hf_peft(random_adapter(tiny_spec(), seed=1), tmp_path / "a")
    changed = write_hf_peft(random_adapter(tiny_spec(), seed=2), tmp_path / "b")
    version, _ = register(session, blob_store, first)
    keep = referenced_blob_keys(session)
    with pytest.raises(VersionConflict):
        register(session, blob_store, changed)
    session.rollback()
    orphans = stored_keys(blob_store) - keep
    assert orphans  # the rejected upload's blobs were stored before the conflict was known
    assert run_blob_gc(session, blob_store, timedelta(hours=1)) == []
    later = datetime.now(UTC) + timedelta(hours=2)
    removed = run_blob_gc(session, blob_store, timedelta(hours=1), now=later)
    assert set(removed) == orphans
    assert stored_keys(blob_store) == keep
    # After a purge its blobs are unreferenced too (shared blobs would stay).
    registry.purge(session, version.id, actor="admin")
    assert referenced_blob_keys(session) == set()
    assert set(run_blob_gc(session, blob_store, timedelta(0), now=later)) == keep
    assert stored_keys(blob_store) == set()


def test_invalid_adapter_uploads_nothing(session, blob_store, auto_ns, base_model, tmp_path):
    wrong = write_hf_peft(random_adapter(tiny_spec(hidden_size=128), seed=3), tmp_path / "w")
    with pytest.raises(AdapterInvalid) as info:
        register(session, blob_store, wrong)
    assert info.value.code == "shape_mismatch"
    assert stored_keys(blob_store) == set()
    session.rollback()
    assert session.execute(sa.select(sa.func.count()).select_from(AdapterFile)).scalar() == 0


@pytest.mark.parametrize("blob_store", ["file"], indirect=True)
def test_symlinks_and_missing_dirs_are_refused(session, blob_store, auto_ns, base_model, tmp_path):
    source = write_hf_peft(random_adapter(tiny_spec(), seed=4), tmp_path / "s")
    os.symlink("/etc/passwd", source / "notes.txt")
    with pytest.raises(AdapterInvalid) as info:
        register(session, blob_store, source)
    assert info.value.code == "unsafe_archive"
    with pytest.raises(AdapterInvalid) as info:
        register(session, blob_store, tmp_path / "nothing-here")
    assert info.value.code == "missing_file"
    assert stored_keys(blob_store) == set()
