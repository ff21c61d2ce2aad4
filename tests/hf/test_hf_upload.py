"""Uploads through ``/v1/hf`` with the real ``huggingface_hub``: ``create_repo`` +
``upload_folder`` of a ``peft`` ``save_pretrained`` directory registers the version its
revision names (then downloadable), ``hf upload`` does the same, a commit is immutable, and
hostile or foreign commits are refused with nothing registered."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from support.hf_hub import hf_endpoint, hf_env
from support.live_api import LiveRegistry
from support.tiny import tiny_hf_config


def api(reg: LiveRegistry, token: str | None = None) -> HfApi:
    return HfApi(endpoint=hf_endpoint(reg), token=token or reg.admin_token)


def peft_save_pretrained(directory: Path, *, seed: int = 0) -> Path:
    """What a PEFT training run leaves: ``save_pretrained`` of a LoRA on the tiny Llama,
    with non-zero B (as after training) and ``base_model_name_or_path`` = ``tiny``."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    base = LlamaForCausalLM(LlamaConfig(**tiny_hf_config()))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.peft_config["default"].base_model_name_or_path = "tiny"
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    model.save_pretrained(directory, save_embedding_layers=False)  # no Hub look-up of "tiny"
    return directory


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_upload_folder_of_a_peft_directory_registers_the_version(
    hf_registry: LiveRegistry, tmp_path: Path
) -> None:
    folder = peft_save_pretrained(tmp_path / "trained")
    hub = api(hf_registry)
    url = hub.create_repo("acme/peft-bot", exist_ok=True)
    assert url.repo_id == "acme/peft-bot"
    assert url == f"{hf_endpoint(hf_registry)}/models/acme/peft-bot"  # what clients < 1.0 parse
    info = hub.upload_folder(repo_id="acme/peft-bot", folder_path=folder, revision="1.0.0")
    entity = hf_registry.admin.request("GET", "/v1/adapters/acme/peft-bot/1.0.0")
    assert entity["status"] == "ready" and entity["base_model"] == "tiny"
    originals = {f["path"]: f["sha256"] for f in entity["files"] if f["role"] == "original"}
    assert originals == {p.name: sha256(p) for p in folder.iterdir() if p.is_file()}
    assert hub.model_info("acme/peft-bot", revision="1.0.0").sha == info.oid
    assert hub.model_info("acme/peft-bot").sha == info.oid  # main: the highest ready version
    got = hf_hub_download(
        "acme/peft-bot",
        "README.md",
        revision=info.oid,
        endpoint=hf_endpoint(hf_registry),
        token=hf_registry.admin_token,
        cache_dir=tmp_path / "cache",
    )
    assert Path(got).read_bytes() == (folder / "README.md").read_bytes()
    # The same files again: the same version, the same commit id.
    again = hub.upload_folder(repo_id="acme/peft-bot", folder_path=folder, revision="1.0.0")
    assert again.oid == info.oid
    # Other files under the same version: versions are immutable.
    other = peft_save_pretrained(tmp_path / "other", seed=1)
    with pytest.raises(HfHubHTTPError) as refused:
        hub.upload_folder(repo_id="acme/peft-bot", folder_path=other, revision="1.0.0")
    assert refused.value.response.status_code == 409
    assert refused.value.response.headers["x-error-code"] == "version_conflict"
    # `main` is never written: the commit names the version it creates.
    with pytest.raises(HfHubHTTPError) as to_main:
        hub.upload_folder(repo_id="acme/peft-bot", folder_path=other)
    assert to_main.value.response.headers["x-error-code"] == "revision_required"
    assert hub.model_info("acme/peft-bot").sha == info.oid


def test_hf_upload_cli_registers_a_version(hf_registry: LiveRegistry, tmp_path: Path) -> None:
    folder = peft_save_pretrained(tmp_path / "trained", seed=2)
    hf = Path(sys.executable).with_name("hf")
    done = subprocess.run(
        [str(hf), "upload", "acme/cli-bot", str(folder), ".", "--revision", "2.0.0"],
        env=hf_env(hf_registry, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    entity = hf_registry.admin.request("GET", "/v1/adapters/acme/cli-bot/2.0.0")
    originals = {f["path"]: f["sha256"] for f in entity["files"] if f["role"] == "original"}
    assert originals["adapter_model.safetensors"] == sha256(folder / "adapter_model.safetensors")
    assert api(hf_registry).model_info("acme/cli-bot", revision="2.0.0").sha in done.stdout


def _no_version(reg: LiveRegistry, repo: str, version: str) -> None:
    with reg.http(reg.admin_token) as http:
        assert http.get(f"/v1/adapters/{repo}/{version}").status_code == 404
    with pytest.raises(RevisionNotFoundError):
        api(reg).model_info(repo, revision=version)


def test_an_adapter_with_broken_safetensors_is_refused_and_not_registered(
    hf_registry: LiveRegistry, tmp_path: Path
) -> None:
    folder = peft_save_pretrained(tmp_path / "broken", seed=3)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])  # header length: garbage
    with pytest.raises(HfHubHTTPError) as refused:
        api(hf_registry).upload_folder(repo_id="acme/broken", folder_path=folder, revision="1.0.0")
    assert refused.value.response.status_code == 422
    assert refused.value.response.headers["x-error-code"] == "bad_safetensors"
    assert "error" in refused.value.response.json()
    _no_version(hf_registry, "acme/broken", "1.0.0")


def _ndjson(*items: dict) -> bytes:
    return b"".join(json.dumps(i).encode() + b"\n" for i in items)


def test_paths_leaving_the_adapter_are_refused(hf_registry: LiveRegistry, tmp_path: Path) -> None:
    folder = peft_save_pretrained(tmp_path / "ok", seed=4)
    files = [
        {
            "key": "file",
            "value": {
                "path": p.name,
                "encoding": "base64",
                "content": base64.b64encode(p.read_bytes()).decode(),
            },
        }
        for p in folder.iterdir()
    ]
    evil = {
        "key": "file",
        "value": {"path": "../../evil.txt", "encoding": "base64", "content": "eA=="},
    }
    header = {"key": "header", "value": {"summary": "x", "description": ""}}
    with hf_registry.http(hf_registry.admin_token) as http:
        pre = http.post(
            "/v1/hf/api/models/acme/evil/preupload/1.0.0",
            json={"files": [{"path": "../../evil.txt", "sample": "", "size": 1}]},
        )
        commit = http.post(
            "/v1/hf/api/models/acme/evil/commit/1.0.0",
            content=_ndjson(header, *files, evil),
            headers={"Content-Type": "application/x-ndjson"},
        )
    for answer in (pre, commit):
        assert answer.status_code == 400, answer.text
        assert answer.headers["x-error-code"] == "unsafe_path"
    assert not list(hf_registry.home.rglob("evil.txt"))
    assert not list(tmp_path.rglob("evil.txt"))
    _no_version(hf_registry, "acme/evil", "1.0.0")
    # The stock client refuses such a path itself; a deletion is refused by the registry.
    with pytest.raises(HfHubHTTPError) as deleting:
        from huggingface_hub import CommitOperationDelete

        api(hf_registry).create_commit(
            "acme/evil",
            [CommitOperationDelete("adapter_config.json")],
            commit_message="rm",
            revision="1.0.0",
        )
    assert deleting.value.response.headers["x-error-code"] == "immutable_version"


def test_another_tenant_cannot_commit(hf_registry: LiveRegistry, tmp_path: Path) -> None:
    folder = peft_save_pretrained(tmp_path / "t", seed=5)
    stranger = hf_registry.mint("writer", "other", "hf-other-writer")
    reader = hf_registry.mint("reader", "acme", "hf-acme-reader")
    with pytest.raises(RepositoryNotFoundError):
        api(hf_registry, stranger).upload_folder(
            repo_id="acme/taken", folder_path=folder, revision="1.0.0"
        )
    with pytest.raises(RepositoryNotFoundError):
        api(hf_registry, stranger).create_repo("acme/taken", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as short:
        api(hf_registry, reader).create_commit(
            "acme/taken",
            [CommitOperationAdd("adapter_config.json", folder / "adapter_config.json")],
            commit_message="x",
            revision="1.0.0",
        )
    assert short.value.response.status_code == 403
    _no_version(hf_registry, "acme/taken", "1.0.0")
    with httpx.Client(base_url=hf_registry.base_url) as anonymous:
        answer = anonymous.post(
            "/v1/hf/api/repos/create", json={"name": "x", "organization": "acme"}
        )
    assert answer.status_code == 401 and answer.headers["x-error-code"] == "unauthorized"


def test_commits_follow_the_namespace_policy_and_quota(
    hf_registry: LiveRegistry, tmp_path: Path
) -> None:
    hf_registry.admin.create_namespace("review", approval_policy="manual")
    hf_registry.admin.create_namespace("small", approval_policy="auto", max_versions=1)
    hub = api(hf_registry)
    folder = peft_save_pretrained(tmp_path / "a", seed=8)
    info = hub.upload_folder(repo_id="review/bot", folder_path=folder, revision="1.0.0")
    entity = hf_registry.admin.request("GET", "/v1/adapters/review/bot/1.0.0")
    assert entity["status"] == "pending"  # waits for an approval, as a native upload does
    assert hub.model_info("review/bot", revision="1.0.0").sha == info.oid
    with pytest.raises(RevisionNotFoundError):
        hub.model_info("review/bot")  # main: no ready version yet
    hf_registry.admin.request("PATCH", f"/v1/adapters/{entity['id']}", json={"status": "ready"})
    assert hub.model_info("review/bot").sha == info.oid
    hub.upload_folder(repo_id="small/bot", folder_path=folder, revision="1.0.0")
    second = peft_save_pretrained(tmp_path / "b", seed=9)
    with pytest.raises(HfHubHTTPError) as over:
        hub.upload_folder(repo_id="small/bot", folder_path=second, revision="1.1.0")
    assert over.value.response.status_code == 413
    assert over.value.response.headers["x-error-code"] == "quota_exceeded"
    _no_version(hf_registry, "small/bot", "1.1.0")
