"""LFS uploads (``LORAFLEET_HF_UPLOAD_MODE=lfs``) by a stock client run with
``HF_HUB_DISABLE_XET=1``: batch, signed PUT, verify, then a commit of ``lfsFile`` lines
registers the version; a PUT of other bytes or with a forged signature stores nothing."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support.hf_hub import hf_endpoint, hf_env
from support.live_api import LiveRegistry, fresh_database, serve_registry
from support.tiny import tiny_hf_config
from test_hf_upload import peft_save_pretrained, sha256

from store.blobs import blob_key

UPLOAD = """
import sys
from huggingface_hub import HfApi, constants
assert constants.HF_HUB_DISABLE_XET
api = HfApi()
print(api.upload_folder(repo_id="acme/lfs-bot", folder_path=sys.argv[1], revision="1.0.0").oid)
"""


@pytest.fixture
def lfs_registry(tmp_path: Path):
    with (
        fresh_database("sqlite", tmp_path) as url,
        serve_registry(url, tmp_path, hf_upload_mode="lfs") as reg,
    ):
        reg.admin.register_base_model("tiny", tiny_hf_config())
        reg.admin.create_namespace("acme", approval_policy="auto")
        yield reg


def test_a_client_without_xet_uploads_through_lfs(
    lfs_registry: LiveRegistry, tmp_path: Path
) -> None:
    folder = peft_save_pretrained(tmp_path / "trained", seed=7)
    env = {**hf_env(lfs_registry, tmp_path), "HF_HUB_DISABLE_XET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", UPLOAD, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    entity = lfs_registry.admin.request("GET", "/v1/adapters/acme/lfs-bot/1.0.0")
    originals = {f["path"]: f["sha256"] for f in entity["files"] if f["role"] == "original"}
    assert originals == {p.name: sha256(p) for p in folder.iterdir() if p.is_file()}
    with lfs_registry.http(lfs_registry.admin_token) as http:
        info = http.get("/v1/hf/api/models/acme/lfs-bot/revision/1.0.0").json()
    assert info["sha"] == done.stdout.strip().splitlines()[-1]


def test_a_put_of_other_bytes_or_a_forged_url_stores_nothing(
    lfs_registry: LiveRegistry, tmp_path: Path
) -> None:
    data = b"the bytes announced"
    oid = hashlib.sha256(data).hexdigest()
    batch = {"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}
    with lfs_registry.http(lfs_registry.admin_token) as http:
        answer = http.post("/v1/hf/acme/lfs-bot.git/info/lfs/objects/batch", json=batch).json()
    href = answer["objects"][0]["actions"]["upload"]["href"]
    assert href.startswith(hf_endpoint(lfs_registry))
    other = httpx.put(href, content=data.upper())  # same length, other bytes
    forged = httpx.put(href.replace("sig=", "sig=0"), content=data)
    assert other.status_code == 400 and other.headers["x-error-code"] == "digest_mismatch"
    assert forged.status_code == 403
    assert not lfs_registry.blobs.exists(blob_key(oid))
    good = httpx.put(href, content=data)  # no credentials: the signature is the permission
    assert good.status_code == 200, good.text
    assert lfs_registry.blobs.exists(blob_key(oid))
    with lfs_registry.http(None) as anonymous:
        refused = anonymous.post("/v1/hf/acme/lfs-bot.git/info/lfs/objects/batch", json=batch)
    assert refused.status_code == 401
