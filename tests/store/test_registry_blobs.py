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
from store.blobs import FileBlobStore, referenced_blob_keys, run_blob_gc
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


class CountingFileStore(FileBlobStore):
    """A real filesystem store that also counts the bytes each upload streamed."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.streamed: list[int] = []

    def _put(self, fh):  # type: ignore[no-untyped-def]
        ref = super()._put(fh)
        self.streamed.append(ref.size)
        return ref


def test_a_canonical_file_equal_to_an_original_is_not_stored_twice(
    session, auto_ns, base_model, tmp_path
):
    # An fp32 peft save_pretrained weights file is byte-identical to the canonical one; it
    # was hashed, written and fsynced a second time only to be dropped as a duplicate.
    blobs = CountingFileStore(tmp_path / "blobs")
    source = write_hf_peft(random_adapter(tiny_spec(), rank=4, seed=5), tmp_path / "src")
    version, _ = register(session, blobs, source)
    files = {(f.role, f.path): f for f in list_files(session, version.id)}
    weights = "adapter_model.safetensors"
    assert files["canonical", weights].blob_key == files["original", weights].blob_key
    assert files["canonical", weights].size == (source / weights).stat().st_size
    # Each distinct blob streamed once (this writer's config is the canonical one, too).
    distinct = {f.blob_key: f.size for f in files.values()}
    assert sorted(blobs.streamed) == sorted(distinct.values())
    assert stored_keys(blobs) == {f.blob_key for f in files.values()}


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
