"""The API on the S3 blob backend (moto's S3 server through the real ``minio`` SDK), quotas
and the Prometheus numbers uploads and downloads leave behind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine
from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry
from support.tiny import tiny_hf_config

from store.api.server import run_registry_api
from store.blobs import open_blob_store
from store.client import ApiError, RegistryClient
from store.client_download import download_adapter
from store.settings import StoreSettings

S3_KEY = "testing"


def test_upload_and_download_through_s3_blobs(
    db_url: str, engine: Engine, tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    settings = StoreSettings(
        home=tmp_path / "home",
        database_url=db_url,
        blob_url=f"s3://{s3_bucket}",
        s3_endpoint=s3_endpoint,
        s3_access_key=S3_KEY,
        s3_secret_key=S3_KEY,
    )
    blobs = open_blob_store(settings.blob_url or "", settings)
    src = write_hf_peft(random_adapter(seed=4), tmp_path / "src")
    with run_registry_api(settings, blobs=blobs, engine=engine) as (url, token):
        with RegistryClient(url, token) as admin:
            assert httpx.get(f"{url}/v1/health/ready").json()["checks"]["blob_store"] == "ok"
            admin.register_base_model("tiny", tiny_hf_config())
            admin.create_namespace("acme", approval_policy="auto")
            entity = admin.upload_adapter(
                src, namespace="acme", name="bot", version="1.0.0", base_model="tiny"
            )
            assert entity["status"] == "ready"
            for f in entity["files"]:
                assert blobs.exists(f"sha256/{f['sha256']}")
            out = download_adapter(admin, entity["id"], tmp_path / "out", canonical=False)
    for path in src.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes()


def test_quota_exceeded_is_413_and_keeps_the_namespace_usable(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    admin = live_registry.admin
    admin.register_base_model("tiny", tiny_hf_config())
    admin.create_namespace("small", approval_policy="auto", max_versions=1)
    src = write_hf_peft(random_adapter(seed=1), tmp_path / "a")
    admin.upload_adapter(src, namespace="small", name="a", version="1.0.0", base_model="tiny")
    other = write_hf_peft(random_adapter(seed=2), tmp_path / "b")
    with pytest.raises(ApiError) as err:
        admin.upload_adapter(other, namespace="small", name="b", version="1.0.0", base_model="tiny")
    assert (err.value.status, err.value.code) == (413, "quota_exceeded")
    admin.update_namespace("small", max_versions=2)
    again = admin.upload_adapter(
        other, namespace="small", name="b", version="1.0.0", base_model="tiny"
    )
    assert again["status"] == "ready"


def test_metrics_count_adapters_uploads_and_downloads(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    admin = live_registry.admin
    admin.register_base_model("tiny", tiny_hf_config())
    admin.create_namespace("acme", approval_policy="manual")
    src = write_hf_peft(random_adapter(seed=3), tmp_path / "a")
    entity = admin.upload_adapter(
        src, namespace="acme", name="bot", version="1.0.0", base_model="tiny"
    )
    weights = next(f for f in entity["files"] if f["role"] == "canonical" and f["size"] > 1000)
    body = httpx.get(
        f"{live_registry.base_url}/v1/adapters/{entity['id']}/files/{weights['path']}",
        headers={"Authorization": f"Bearer {live_registry.admin_token}"},
    ).content
    assert hashlib.sha256(body).hexdigest() == weights["sha256"]
    text = httpx.get(f"{live_registry.base_url}/metrics").text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['lorafleet_adapters{status="pending"}'] == 1
    assert samples['lorafleet_uploads_total{outcome="created"}'] == 1
    assert samples["lorafleet_downloads_total"] == 1
    assert samples["lorafleet_download_bytes_total"] == weights["size"]
    distinct = {f["sha256"]: f["size"] for f in entity["files"]}
    assert samples["lorafleet_blob_bytes_stored"] == sum(distinct.values())
    route = 'route="/v1/adapters/{adapter_id}/files/{path:path}"'
    assert any(route in key and "_count" in key for key in samples)
