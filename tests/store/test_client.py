"""``RegistryClient`` against a live API: progress reporting, verified downloads that never
leave a corrupt file behind, and API errors as ``ApiError``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry
from support.stored import corrupt_canonical_weights, trainer_style_adapter
from support.tiny import tiny_hf_config

from store.client import ApiError, RegistryClient
from store.client_download import download_adapter, download_file


def _ready_adapter(reg: LiveRegistry, tmp_path: Path) -> tuple[dict, Path]:
    reg.admin.register_base_model("tiny", tiny_hf_config())
    reg.admin.create_namespace("acme", approval_policy="auto")
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
    out = download_adapter(
        live_registry.admin, entity["id"], tmp_path / "out", canonical=False, progress=got.append
    )
    for path in src.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes()
    assert sum(got) == sum(f["size"] for f in entity["files"] if f["role"] == "original")


def test_corrupted_blob_is_refused_and_leaves_no_file(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    entity, _ = _ready_adapter(live_registry, tmp_path)
    weights = corrupt_canonical_weights(live_registry, entity)
    dest = tmp_path / "pulled"
    with pytest.raises(ApiError) as err:
        download_file(live_registry.admin, entity["id"], weights["path"], dest / "w.safetensors")
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
        path = download_file(live_registry.admin, entity["id"], f["path"], tmp_path / f["path"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == f["sha256"]


def test_original_files_download_even_when_they_share_a_path_with_canonical_ones(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    import httpx

    entity, src = trainer_style_adapter(live_registry, tmp_path)
    out = download_adapter(live_registry.admin, entity["id"], tmp_path / "out", canonical=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())
    for path in src.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes()
    # The route addresses either file at the shared path with ``role``.
    url = f"{live_registry.base_url}/v1/adapters/{entity['id']}/files/adapter_config.json"
    headers = {"Authorization": f"Bearer {live_registry.admin_token}"}
    original = httpx.get(url, params={"role": "original"}, headers=headers)
    assert original.status_code == 200 and original.headers["x-lorafleet-role"] == "original"
    assert original.content == (src / "adapter_config.json").read_bytes()
    canonical = httpx.get(url, headers=headers)
    assert canonical.headers["x-lorafleet-role"] == "canonical"
    assert canonical.content != original.content
    bad = httpx.get(url, params={"role": "nope"}, headers=headers)
    assert bad.status_code == 400
    contradiction = httpx.get(
        url, params={"role": "original", "canonical": "true"}, headers=headers
    )
    assert contradiction.status_code == 400
    missing = httpx.get(
        url.replace("adapter_config.json", "adapter_model.bin"),
        params={"role": "original"},
        headers=headers,
    )
    assert missing.status_code == 404


def test_a_failed_adapter_download_leaves_nothing_at_the_destination(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    entity, _ = _ready_adapter(live_registry, tmp_path)
    corrupt_canonical_weights(live_registry, entity)
    parent = tmp_path / "pulled"
    parent.mkdir()
    with pytest.raises(ApiError) as err:
        download_adapter(live_registry.admin, entity["id"], parent / "bot")
    assert err.value.code == "digest_mismatch"
    assert list(parent.iterdir()) == [], "no partial directory, no staging left behind"


def test_downloads_are_world_readable_whatever_the_umask(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    import os
    import stat

    entity, _ = _ready_adapter(live_registry, tmp_path)
    previous = os.umask(0o077)
    try:
        out = download_adapter(live_registry.admin, entity["id"], tmp_path / "a" / "b" / "out")
        single = download_file(
            live_registry.admin,
            entity["id"],
            "adapter_config.json",
            tmp_path / "c" / "adapter_config.json",
        )
    finally:
        os.umask(previous)
    for directory in (tmp_path / "a", tmp_path / "a" / "b", out, tmp_path / "c"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755, directory
    for path in [*out.iterdir(), single]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_adapter_download_refuses_a_file_or_a_non_empty_directory(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    entity, _ = _ready_adapter(live_registry, tmp_path)
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    with pytest.raises(ApiError) as not_dir:
        download_adapter(live_registry.admin, entity["id"], a_file)
    assert not_dir.value.code == "not_a_directory" and a_file.read_text() == "mine"
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("keep")
    with pytest.raises(ApiError) as not_empty:
        download_adapter(live_registry.admin, entity["id"], full)
    assert not_empty.value.code == "destination_not_empty"
    assert [p.name for p in full.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    out = download_adapter(live_registry.admin, entity["id"], empty)
    assert {p.name for p in out.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_fleet_of_an_unregistered_base_model_is_404_with_a_suggestion(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    _ready_adapter(live_registry, tmp_path)
    live_registry.admin.register_base_model("tiny-llama", tiny_hf_config())
    with pytest.raises(ApiError) as typo:
        live_registry.admin.fleet("tiny-lama")
    assert (typo.value.status, typo.value.code) == (404, "unknown_base_model")
    assert "did you mean 'tiny-llama'?" in typo.value.message
    with pytest.raises(ApiError) as far:
        live_registry.admin.fleet("mistral-7b")
    assert far.value.code == "unknown_base_model" and "'tiny'" in far.value.message
    assert len(live_registry.admin.fleet("tiny")["adapters"]) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_401_says_how_to_give_a_token(live_registry: LiveRegistry) -> None:
    for token in (None, "lft_wrong"):
        with (
            RegistryClient(live_registry.base_url, token) as client,
            pytest.raises(ApiError) as err,
        ):
            client.list_namespaces()
        assert (err.value.status, err.value.code) == (401, "unauthorized")
        assert "LORAFLEET_TOKEN" in err.value.message and "--token" in err.value.message


def test_unreachable_names_the_url_and_says_to_check_the_api_is_up() -> None:
    from support.services import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with RegistryClient(url, "lft_x", timeout=5) as client, pytest.raises(ApiError) as err:
        client.list_namespaces()
    assert err.value.code == "unreachable"
    assert url in err.value.message and "check that it is up" in err.value.message
    assert "LORAFLEET_API_URL" in err.value.message
