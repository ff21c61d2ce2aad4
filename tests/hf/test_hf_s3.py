"""``/v1/hf`` on the S3 blob backend (moto's standalone S3 server through the real ``minio``
SDK): ``resolve`` answers 302 to a presigned URL with ``X-Linked-Etag``/``X-Linked-Size``,
and stock ``hf_hub_download`` / ``snapshot_download`` follow it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from huggingface_hub import hf_hub_download, snapshot_download
from support.hf_hub import hf_endpoint, publish
from support.live_api import fresh_database, serve_registry
from support.services import S3_ACCESS_KEY, S3_SECRET_KEY
from support.tiny import tiny_hf_config


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_s3_blobs_redirect_to_a_presigned_url(
    kind: str, tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    with (
        fresh_database(kind, tmp_path) as url,
        serve_registry(
            url,
            tmp_path,
            blob_url=f"s3://{s3_bucket}",
            s3_endpoint=s3_endpoint,
            s3_access_key=S3_ACCESS_KEY,
            s3_secret_key=S3_SECRET_KEY,
            s3_secure=False,
        ) as reg,
    ):
        reg.admin.register_base_model("tiny", tiny_hf_config())
        reg.admin.create_namespace("acme", approval_policy="auto")
        bot = publish(reg, tmp_path, "acme", "bot", ["1.0.0"])
        weights = bot.canonical("1.0.0")["adapter_model.safetensors"]
        path = f"/v1/hf/acme/bot/resolve/main/{weights['path']}"
        with reg.http(reg.admin_token) as http:
            head = http.head(path)
            get = http.get(path)
        for answer in (head, get):
            assert answer.status_code == 302
            assert answer.headers["x-linked-etag"] == f'"{weights["sha256"]}"'
            assert answer.headers["x-linked-size"] == str(weights["size"])
            assert len(answer.headers["x-repo-commit"]) == 40
            assert not [h for h in answer.headers if h.lower().startswith("x-xet")]
        target = head.headers["location"]
        assert target.startswith(f"http://{s3_endpoint}/{s3_bucket}/sha256/")
        # The presigned URL needs no credentials of ours.
        assert hashlib.sha256(httpx.get(target).content).hexdigest() == weights["sha256"]
        got = hf_hub_download(
            "acme/bot",
            weights["path"],
            endpoint=hf_endpoint(reg),
            token=reg.admin_token,
            cache_dir=tmp_path / "cache",
        )
        assert hashlib.sha256(Path(got).read_bytes()).hexdigest() == weights["sha256"]
        folder = Path(
            snapshot_download(
                "acme/bot",
                revision="1.0.0",
                endpoint=hf_endpoint(reg),
                token=reg.admin_token,
                cache_dir=tmp_path / "cache2",
            )
        )
        want = bot.shown(reg, "1.0.0")
        got_all = {p: hashlib.sha256((folder / p).read_bytes()).hexdigest() for p in want}
        assert got_all == {p: f["sha256"] for p, f in want.items()}
