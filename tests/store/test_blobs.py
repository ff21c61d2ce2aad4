"""Blob stores, specified against both real backends: a directory and moto's S3 server
(spoken to by the real ``minio`` SDK). ``blob_store`` comes from tests/store/conftest.py."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.services import S3_ACCESS_KEY, S3_SECRET_KEY, free_port

from store.blobs import (
    MIN_PART_SIZE,
    BlobCorrupt,
    BlobRef,
    FileBlobStore,
    collect_garbage,
    open_blob_store,
)
from store.blobs_s3 import S3BlobStore
from store.errors import BadRequest, NotFound, TransientError
from store.settings import StoreSettings


def _corrupt(store, key: str, data: bytes) -> None:
    """Overwrite a stored blob's bytes behind the store's back."""
    if isinstance(store, FileBlobStore):
        store.path_for(key).write_bytes(data)
    else:
        import io

        store.client.put_object(store.bucket, key, io.BytesIO(data), len(data))


def test_put_bytes_returns_content_address(blob_store) -> None:
    data = b"lora weights" * 100
    ref = blob_store.put_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    assert ref == BlobRef(key=f"sha256/{sha}", sha256=sha, size=len(data))
    assert blob_store.exists(ref.key)
    assert b"".join(blob_store.iter_chunks(ref.key, chunk_size=7)) == data


def test_same_bytes_are_stored_once(blob_store, tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(os.urandom(4096))
    first = blob_store.put_file(path)
    second = blob_store.put_bytes(path.read_bytes())
    assert first == second
    assert [key for key, _ in blob_store.list_blobs()] == [first.key]


def test_download_verifies_and_writes_file(blob_store, tmp_path: Path) -> None:
    data = os.urandom(3000)
    ref = blob_store.put_bytes(data)
    dest = tmp_path / "out" / "file.bin"
    blob_store.download(ref.key, dest, ref.sha256)
    assert dest.read_bytes() == data


def test_corrupted_blob_fails_download_and_leaves_no_file(blob_store, tmp_path: Path) -> None:
    ref = blob_store.put_bytes(b"good bytes")
    _corrupt(blob_store, ref.key, b"evil bytes")
    dest = tmp_path / "out" / "dest.bin"
    with pytest.raises(BlobCorrupt) as err:
        blob_store.download(ref.key, dest, ref.sha256)
    assert err.value.code == "digest_mismatch"
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no temp file left behind either
    with pytest.raises(BlobCorrupt):
        b"".join(blob_store.iter_chunks(ref.key))


def test_download_with_wrong_expected_digest_is_refused(blob_store, tmp_path: Path) -> None:
    ref = blob_store.put_bytes(b"abc")
    with pytest.raises(BlobCorrupt):
        blob_store.download(ref.key, tmp_path / "x", "0" * 64)
    assert not (tmp_path / "x").exists()


def test_missing_blob_is_not_found(blob_store, tmp_path: Path) -> None:
    key = "sha256/" + "ab" * 32
    assert not blob_store.exists(key)
    with pytest.raises(NotFound):
        blob_store.download(key, tmp_path / "x", "ab" * 32)


def test_malformed_keys_are_refused(blob_store) -> None:
    for key in ("../../etc/passwd", "sha256/../../x", "sha256/" + "g" * 64, "md5/abc"):
        with pytest.raises(BadRequest):
            blob_store.exists(key)


def test_delete_removes_blob_and_is_idempotent(blob_store) -> None:
    ref = blob_store.put_bytes(b"to delete")
    blob_store.delete(ref.key)
    blob_store.delete(ref.key)
    assert not blob_store.exists(ref.key)


def test_gc_respects_references_and_grace(blob_store) -> None:
    kept = blob_store.put_bytes(b"referenced")
    orphan = blob_store.put_bytes(b"orphan")
    grace = timedelta(hours=1)
    # Within the grace period even an orphan survives (its row may not be committed yet).
    assert collect_garbage(blob_store, {kept.key}, grace) == []
    assert blob_store.exists(orphan.key)
    later = datetime.now(UTC) + timedelta(hours=2)
    assert collect_garbage(blob_store, {kept.key}, grace, now=later) == [orphan.key]
    assert blob_store.exists(kept.key)
    assert not blob_store.exists(orphan.key)


def test_list_blobs_reports_utc_modification_times(blob_store) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    ref = blob_store.put_bytes(b"timed")
    [(key, modified)] = list(blob_store.list_blobs())
    assert key == ref.key
    assert modified.tzinfo is not None
    assert before <= modified <= datetime.now(UTC) + timedelta(seconds=5)


def test_check_passes_on_a_healthy_store(blob_store) -> None:
    blob_store.check()


def test_large_file_round_trips(blob_store, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(MIN_PART_SIZE * 2 + 12345))
    ref = blob_store.put_file(path)
    blob_store.download(ref.key, tmp_path / "copy.bin", ref.sha256)
    assert (tmp_path / "copy.bin").read_bytes() == path.read_bytes()


def test_s3_large_file_goes_multipart_and_verifies(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    store = S3BlobStore.connect(
        endpoint=s3_endpoint,
        bucket=s3_bucket,
        access_key=S3_ACCESS_KEY,
        secret_key=S3_SECRET_KEY,
        part_size=MIN_PART_SIZE,
    )
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(MIN_PART_SIZE * 2 + 1000))
    ref = store.put_file(path)
    etag = store.client.stat_object(s3_bucket, ref.key).etag.strip('"')
    assert etag.endswith("-3"), etag  # three parts: 5 MiB, 5 MiB, the rest
    assert hashlib.sha256(b"".join(store.iter_chunks(ref.key))).hexdigest() == ref.sha256


def test_s3_bucket_is_created_when_missing(s3_endpoint: str, s3_bucket: str) -> None:
    settings = StoreSettings(
        s3_endpoint=s3_endpoint, s3_access_key=S3_ACCESS_KEY, s3_secret_key=S3_SECRET_KEY
    )
    store = open_blob_store(f"s3://{s3_bucket}", settings)
    assert store.client.bucket_exists(s3_bucket)
    # Opening again (bucket now exists) is fine.
    open_blob_store(f"s3://{s3_bucket}", settings).check()


def test_unreachable_s3_is_transient() -> None:
    started = time.monotonic()
    with pytest.raises(TransientError):
        S3BlobStore.connect(
            endpoint=f"127.0.0.1:{free_port()}",
            bucket="nobody-home",
            access_key="x",
            secret_key="y",
        )
    assert time.monotonic() - started < 20


def test_file_gc_sweeps_stale_temp_files(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    stale = store.root / "tmp" / "crashed-upload"
    stale.write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    collect_garbage(store, set(), timedelta(hours=1))
    assert not stale.exists()


def test_open_blob_store_rejects_unknown_urls(tmp_path: Path) -> None:
    with pytest.raises(BadRequest):
        open_blob_store("ftp://x", StoreSettings(home=tmp_path))
    with pytest.raises(BadRequest):
        open_blob_store("s3://bucket", StoreSettings(home=tmp_path, s3_endpoint=None))
    assert isinstance(open_blob_store(f"file://{tmp_path}/b", StoreSettings()), FileBlobStore)


def test_dedup_refreshes_old_blob_timestamp(tmp_path: Path) -> None:
    # S3 timestamps cannot be back-dated from a client, so this runs on the file backend.
    blob_store = FileBlobStore(tmp_path / "blobs")
    ref = blob_store.put_bytes(b"old orphan re-uploaded")
    old = time.time() - 7200
    os.utime(blob_store.path_for(ref.key), (old, old))
    blob_store.put_bytes(b"old orphan re-uploaded")
    assert collect_garbage(blob_store, set(), timedelta(hours=1)) == []
