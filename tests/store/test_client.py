"""``RegistryClient`` against a live API: progress reporting, verified downloads that never
leave a corrupt file behind, and API errors as ``ApiError``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from factories import random_adapter, tiny_hf_config, write_hf_peft
from live_api import (
    LiveRegistry,
    live_registry_fixture,  # noqa: F401 - the live_registry fixture
)

from store.client import ApiError, RegistryClient


def _ready_adapter(reg: LiveRegistry, tmp_path: Path) -> tuple[dict, Path]:
    reg.admin.register_base_model("tiny", tiny_hf_config())
    reg.admin.create_namespace("acme")
    src = write_hf_peft(random_adapter(seed=5, rank=8), tmp_path / "src")
    seen: list[int] = []
    entity = reg.admin.upload_adapter(
        src,
        namespace="acme",
        name="bot",
        version="2.0.0",
        base_model="tiny",
        progress=seen.append,
    )
    assert sum(seen) == sum(p.stat().st_size for p in src.iterdir())
    return entity, src


def test_pull_by_coordinates_gets_the_originals_byte_for_byte(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    entity, src = _ready_adapter(live_registry, tmp_path)
    resolved = live_registry.admin.resolve("acme/bot@2.0.0")
    assert resolved["id"] == entity["id"]
    got: list[int] = []
    out = live_registry.admin.download_adapter(
        entity["id"], tmp_path / "out", canonical=False, progress=got.append
    )
    for path in src.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes()
    assert sum(got) == sum(f["size"] for f in entity["files"] if f["role"] == "original")


def test_corrupted_blob_is_refused_and_leaves_no_file(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    entity, _ = _ready_adapter(live_registry, tmp_path)
    weights = next(
        f
        for f in entity["files"]
        if f["role"] == "canonical" and f["path"] == "adapter_model.safetensors"
    )
    blob = live_registry.blobs.path_for(f"sha256/{weights['sha256']}")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same length, different bytes: only a digest check notices
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    dest = tmp_path / "pulled"
    with pytest.raises(ApiError) as err:
        live_registry.admin.download_file(entity["id"], weights["path"], dest / "w.safetensors")
    assert err.value.code == "digest_mismatch"
    assert not (dest / "w.safetensors").exists()
    assert [p.name for p in dest.iterdir()] == []  # no temp file left either


def test_unreachable_server_and_bad_token_are_api_errors(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    with RegistryClient("http://127.0.0.1:9", "x", timeout=2) as nowhere:
        with pytest.raises(ApiError) as down:
            nowhere.list_adapters()
    assert (down.value.status, down.value.code) == (0, "unreachable")
    with live_registry.client("lft_wrong") as wrong:
        with pytest.raises(ApiError) as denied:
            wrong.fleet("tiny")
    assert (denied.value.status, denied.value.code) == (401, "unauthorized")
    with pytest.raises(ApiError) as not_dir:
        live_registry.admin.upload_adapter(
            tmp_path / "missing", namespace="a", name="b", version="1.0.0", base_model="tiny"
        )
    assert not_dir.value.code == "not_a_directory"


def test_etag_matches_the_sha256_the_client_verifies(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    entity, _ = _ready_adapter(live_registry, tmp_path)
    for f in entity["files"]:
        if f["role"] != "canonical":
            continue
        path = live_registry.admin.download_file(entity["id"], f["path"], tmp_path / f["path"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == f["sha256"]
