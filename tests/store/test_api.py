"""The registry REST API over real HTTP (uvicorn in a thread) on SQLite and PostgreSQL:
catalog CRUD, uploads, immutability, validation errors, approval, files, fleet, delete."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry
from support.tiny import tiny_hf_config

from store.client import ApiError
from store.client_download import download_adapter

BASE = "meta/tiny"


def _adapter(tmp_path: Path, seed: int = 0, name: str | None = None, rank: int = 4) -> Path:
    return write_hf_peft(random_adapter(seed=seed, rank=rank), tmp_path / (name or f"ad{seed}"))


def _setup(reg: LiveRegistry, *namespaces: str, policy: str = "auto") -> None:
    reg.admin.register_base_model(BASE, tiny_hf_config())
    for ns in namespaces:
        reg.admin.create_namespace(ns, approval_policy=policy)


def _upload(reg: LiveRegistry, src: Path, ns: str, name: str, version: str = "1.0.0", **kw):
    return reg.admin.upload_adapter(
        src, namespace=ns, name=name, version=version, base_model=BASE, **kw
    )


def _blob_count(reg: LiveRegistry) -> int:
    return sum(1 for p in reg.blob_root.rglob("*") if p.is_file())


def test_health_and_metrics_are_open_and_report(live_registry: LiveRegistry) -> None:
    live = httpx.get(f"{live_registry.base_url}/v1/health/live")
    ready = httpx.get(f"{live_registry.base_url}/v1/health/ready")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "blob_store": "ok"}
    metrics = httpx.get(f"{live_registry.base_url}/metrics")
    assert metrics.status_code == 200
    assert "lorafleet_api_request_seconds_bucket" in metrics.text
    assert "lorafleet_blob_bytes_stored" in metrics.text


def test_anonymous_and_bad_tokens_get_401_in_the_error_shape(
    live_registry: LiveRegistry,
) -> None:
    url = f"{live_registry.base_url}/v1/adapters"
    anonymous = httpx.get(url)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"
    bad = httpx.get(url, headers={"Authorization": "Bearer lft_nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"
    unknown_route = httpx.get(f"{live_registry.base_url}/v1/nothing-here")
    assert unknown_route.status_code == 404
    assert unknown_route.json()["error"]["code"] == "not_found"


def test_namespace_and_base_model_crud(live_registry: LiveRegistry) -> None:
    admin = live_registry.admin
    created = admin.create_namespace("acme", approval_policy="manual", max_versions=10)
    assert created["approval_policy"] == "manual" and created["max_versions"] == 10
    with pytest.raises(ApiError) as dup:
        admin.create_namespace("acme")
    assert (dup.value.status, dup.value.code) == (409, "already_exists")
    patched = admin.update_namespace("acme", approval_policy="auto", description="support")
    assert patched["approval_policy"] == "auto" and patched["description"] == "support"
    assert [ns["name"] for ns in admin.list_namespaces()["data"]] == ["acme"]
    with pytest.raises(ApiError) as bad_policy:
        admin.update_namespace("acme", approval_policy="sometimes")
    assert bad_policy.value.status == 422

    first = admin.request(
        "POST", "/v1/base-models", json={"name": BASE, "config": tiny_hf_config()}
    )
    assert first["num_layers"] == 2 and first["hidden_size"] == 64
    again = httpx.post(
        f"{live_registry.base_url}/v1/base-models",
        json={"name": BASE, "config": tiny_hf_config()},
        headers={"Authorization": f"Bearer {live_registry.admin_token}"},
    )
    assert again.status_code == 200
    assert admin.get_base_model(BASE)["name"] == BASE  # a name with a slash
    assert [m["name"] for m in admin.list_base_models()["data"]] == [BASE]
    with pytest.raises(ApiError) as broken:
        admin.register_base_model("broken", {"hidden_size": "big"})
    assert (broken.value.status, broken.value.code) == (422, "invalid_base_model")
    with pytest.raises(ApiError) as no_config:
        admin.request("POST", "/v1/base-models", json={"name": "x"})
    assert (no_config.value.status, no_config.value.code) == (422, "invalid_body")


def test_upload_to_auto_namespace_is_ready_with_both_file_roles(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    _setup(live_registry, "acme")
    provenance = {"job_id": "job-1", "dataset": "tickets", "metrics": {"loss": 0.5}}
    entity = _upload(live_registry, _adapter(tmp_path), "acme", "bot", provenance=provenance)
    assert entity["status"] == "ready" and entity["coordinates"] == "acme/bot@1.0.0"
    assert entity["rank"] == 4 and entity["format"] == "hf_peft"
    assert entity["provenance"]["job_id"] == "job-1"
    assert entity["provenance"]["metrics"] == {"loss": 0.5}
    roles = {(f["role"], f["path"]) for f in entity["files"]}
    assert ("original", "adapter_model.safetensors") in roles
    assert ("canonical", "adapter_model.safetensors") in roles
    by_coords = live_registry.admin.get_version("acme", "bot", "1.0.0")
    assert by_coords["id"] == entity["id"]
    versions = live_registry.admin.list_versions("acme", "bot")
    assert [v["version"] for v in versions["data"]] == ["1.0.0"]
    # An adapter named "files" is reachable by coordinates despite the files route.
    named_files = _upload(live_registry, _adapter(tmp_path), "acme", "files", "0.1.0")
    assert live_registry.admin.get_version("acme", "files", "0.1.0")["id"] == named_files["id"]


def test_manual_namespace_waits_for_approval_and_refuses_illegal_transitions(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    _setup(live_registry, "acme", policy="manual")
    entity = _upload(live_registry, _adapter(tmp_path), "acme", "bot")
    assert entity["status"] == "pending"
    assert live_registry.admin.fleet(BASE)["adapters"] == []
    before = live_registry.admin.fleet(BASE)["generation"]
    approved = live_registry.admin.set_status(entity["id"], "ready", reason="looks good")
    assert approved["status"] == "ready"
    fleet = live_registry.admin.fleet(BASE)
    assert fleet["generation"] > before
    [served] = fleet["adapters"]
    assert served["id"] == entity["id"]
    canonical = {f["path"]: f["sha256"] for f in entity["files"] if f["role"] == "canonical"}
    assert {f["path"]: f["sha256"] for f in served["files"]} == canonical
    with pytest.raises(ApiError) as illegal:
        live_registry.admin.set_status(entity["id"], "rejected")
    assert (illegal.value.status, illegal.value.code) == (409, "illegal_transition")


def test_reupload_is_idempotent_and_changed_bytes_conflict(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    _setup(live_registry, "acme")
    src = _adapter(tmp_path)
    first = _upload(live_registry, src, "acme", "bot")
    files = [("files", (p.name, p.read_bytes())) for p in sorted(src.iterdir())]
    form = {"namespace": "acme", "name": "bot", "version": "1.0.0", "base_model": BASE}
    again = httpx.post(
        f"{live_registry.base_url}/v1/adapters",
        data=form,
        files=files,
        headers={"Authorization": f"Bearer {live_registry.admin_token}"},
    )
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    with pytest.raises(ApiError) as conflict:
        _upload(live_registry, _adapter(tmp_path, seed=1), "acme", "bot")
    assert (conflict.value.status, conflict.value.code) == (409, "version_conflict")
    assert live_registry.admin.list_adapters()["pagination"]["total"] == 1


def test_broken_adapter_is_422_with_its_code_and_stores_nothing(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    _setup(live_registry, "acme")
    src = _adapter(tmp_path)
    (src / "adapter_model.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{not")
    with pytest.raises(ApiError) as invalid:
        _upload(live_registry, src, "acme", "bot")
    assert (invalid.value.status, invalid.value.code) == (422, "bad_safetensors")
    assert live_registry.admin.list_adapters()["pagination"]["total"] == 0
    assert _blob_count(live_registry) == 0
    with pytest.raises(ApiError) as unknown_base:
        live_registry.admin.upload_adapter(
            _adapter(tmp_path, seed=3),
            namespace="acme",
            name="x",
            version="1.0.0",
            base_model="nope",
        )
    assert (unknown_base.value.status, unknown_base.value.code) == (422, "unknown_base_model")


def test_unsafe_paths_and_missing_fields_are_refused(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    _setup(live_registry, "acme")
    headers = {"Authorization": f"Bearer {live_registry.admin_token}"}
    form = {"namespace": "acme", "name": "bot", "version": "1.0.0", "base_model": BASE}
    for evil in ("../adapter_config.json", "/etc/passwd", "a/../../b"):
        r = httpx.post(
            f"{live_registry.base_url}/v1/adapters",
            data=form,
            files=[("files", (evil, b"{}"))],
            headers=headers,
        )
        assert r.status_code == 400, evil
        assert r.json()["error"]["code"] == "unsafe_path"
    r = httpx.post(
        f"{live_registry.base_url}/v1/adapters",
        data={"namespace": "acme"},
        files=[("files", ("adapter_config.json", b"{}"))],
        headers=headers,
    )
    assert r.status_code == 400 and "name" in r.json()["error"]["message"]
    not_multipart = httpx.post(f"{live_registry.base_url}/v1/adapters", json={}, headers=headers)
    assert not_multipart.status_code == 400
    assert _blob_count(live_registry) == 0
    assert not any((live_registry.home / "tmp").iterdir())  # staging cleaned up


def test_identical_files_are_stored_once_across_names(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    _setup(live_registry, "acme", "globex")
    src = _adapter(tmp_path)
    _upload(live_registry, src, "acme", "bot")
    blobs_after_first = _blob_count(live_registry)
    _upload(live_registry, src, "globex", "other-bot")
    assert _blob_count(live_registry) == blobs_after_first
    assert live_registry.admin.list_adapters()["pagination"]["total"] == 2


def test_pagination_filters_and_sorting(live_registry: LiveRegistry, tmp_path: Path) -> None:
    _setup(live_registry, "acme", "globex")
    src = _adapter(tmp_path)
    for name in ("alpha", "bravo", "charlie"):
        _upload(live_registry, src, "acme", name)
    for name in ("delta", "echo-bravo"):
        _upload(live_registry, src, "globex", name)
    admin = live_registry.admin
    page = admin.list_adapters(page_size=2, page=3, sort="name")
    assert page["object"] == "list"
    assert page["pagination"] == {"page": 3, "page_size": 2, "total": 5, "total_pages": 3}
    assert [a["name"] for a in page["data"]] == ["echo-bravo"]
    names = [a["name"] for a in admin.list_adapters(sort="-name")["data"]]
    assert names == ["echo-bravo", "delta", "charlie", "bravo", "alpha"]
    assert {a["name"] for a in admin.list_adapters(search="BRAVO")["data"]} == {
        "bravo",
        "echo-bravo",
    }
    assert admin.list_adapters(namespace="globex")["pagination"]["total"] == 2
    assert admin.list_adapters(status="pending")["pagination"]["total"] == 0
    assert admin.list_adapters(base_model=BASE, status="ready")["pagination"]["total"] == 5
    for bad in (
        {"page_size": 0},
        {"page_size": 100000},
        {"page": 0},
        {"sort": "size"},
        {"page": "x"},
        {"status": "weird"},
    ):
        with pytest.raises(ApiError) as err:
            admin.list_adapters(**bad)
        assert (err.value.status, err.value.code) == (400, "bad_request"), bad


def test_file_download_has_etag_length_and_verified_digest(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    _setup(live_registry, "acme")
    src = _adapter(tmp_path)
    entity = _upload(live_registry, src, "acme", "bot")
    canonical = {f["path"]: f for f in entity["files"] if f["role"] == "canonical"}
    headers = {"Authorization": f"Bearer {live_registry.admin_token}"}
    url = f"{live_registry.base_url}/v1/adapters/{entity['id']}/files/adapter_model.safetensors"
    r = httpx.get(url, headers=headers)
    assert r.status_code == 200
    expected = canonical["adapter_model.safetensors"]
    assert r.headers["etag"] == f'"{expected["sha256"]}"'
    assert int(r.headers["content-length"]) == expected["size"] == len(r.content)
    assert hashlib.sha256(r.content).hexdigest() == expected["sha256"]
    original = httpx.get(url, params={"canonical": "false"}, headers=headers)
    assert original.content == (src / "adapter_model.safetensors").read_bytes()
    missing = httpx.get(url.replace("adapter_model", "nothing"), headers=headers)
    assert missing.status_code == 404
    dest = download_adapter(live_registry.admin, entity["id"], tmp_path / "pulled")
    assert sorted(p.name for p in dest.iterdir()) == sorted(canonical)
    for name, f in canonical.items():
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == f["sha256"]


def test_metadata_edits_never_touch_content(live_registry: LiveRegistry, tmp_path: Path) -> None:
    _setup(live_registry, "acme")
    entity = _upload(live_registry, _adapter(tmp_path), "acme", "bot")
    edited = live_registry.admin.update_adapter(
        entity["id"], description="v1 support bot", custom_fields={"team": "cx"}
    )
    assert edited["description"] == "v1 support bot" and edited["custom_fields"] == {"team": "cx"}
    assert edited["content_sha256"] == entity["content_sha256"]
    with pytest.raises(ApiError) as content_edit:
        live_registry.admin.update_adapter(entity["id"], rank=8)
    assert (content_edit.value.status, content_edit.value.code) == (422, "invalid_body")


def test_delete_archives_and_admin_purge_removes(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    _setup(live_registry, "acme")
    entity = _upload(live_registry, _adapter(tmp_path), "acme", "bot")
    writer = live_registry.client(live_registry.admin.create_token("writer", "acme", "ci"))
    archived = writer.delete_adapter(entity["id"])
    assert archived["status"] == "archived"
    assert live_registry.admin.fleet(BASE)["adapters"] == []
    with pytest.raises(ApiError) as not_admin:
        writer.delete_adapter(entity["id"], purge=True)
    assert not_admin.value.status == 403
    purged = live_registry.admin.delete_adapter(entity["id"], purge=True)
    assert purged == {"object": "adapter", "id": entity["id"], "deleted": True}
    with pytest.raises(ApiError) as gone:
        live_registry.admin.get_adapter(entity["id"])
    assert gone.value.status == 404


def test_shape_mismatch_names_the_registered_base_model(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    from support.tiny import tiny_spec

    live_registry.admin.register_base_model("tiny-llama", tiny_hf_config())
    live_registry.admin.create_namespace("acme", approval_policy="auto")
    wide = random_adapter(tiny_spec(hidden_size=128), modules=("q_proj", "v_proj"))
    with pytest.raises(ApiError) as err:
        live_registry.admin.upload_adapter(
            write_hf_peft(wide, tmp_path / "wide"),
            namespace="acme",
            name="bot",
            version="1.0.0",
            base_model="tiny-llama",
        )
    assert (err.value.status, err.value.code) == (422, "shape_mismatch")
    assert "trained for hidden_size 128, tiny-llama has 64" in err.value.message
