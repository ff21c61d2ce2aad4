"""The whole system on production backends: PostgreSQL, Redis, S3 (moto's server, spoken to by
the real ``minio`` SDK), with the API, ingest bridge, Celery worker, beat and engine each a
real subprocess.

trainer (real LoRA training) → upload to S3 + ``customizer.job.completed`` → bridge → Celery
chain → registry (pending, manual namespace) → approval through the API → the engine loads
it and its answer changes → archive → the engine evicts it from ``/v1/models``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from minio import Minio
from support.services import S3_ACCESS_KEY, S3_SECRET_KEY, free_port

from events.publisher import announce_job_completed
from lorafleet.demo_flow import ADAPTERS, PROMPT, complete
from lorafleet.stack import Stack, StackConfig
from lorafleet.train import TrainConfig, train_lora
from store.client import ApiError, RegistryClient

BASE = "tiny-llama"


@pytest.fixture
def stack(
    tmp_path: Path, postgres_url: str, redis_url: str, s3_endpoint: str, s3_bucket: str
) -> Iterator[Stack]:
    from engine.tiny import init_tiny

    model_dir = init_tiny(tmp_path / "models" / BASE, std=0.2, seed=7)
    config = StackConfig(
        home=tmp_path / "home",
        api_port=free_port(),
        engine_port=free_port(),
        base_model=BASE,
        model_dir=model_dir,
        redis_url=redis_url,
        database_url=postgres_url,
        blob_url=f"s3://{s3_bucket}",
        extra_env={
            "LORAFLEET_S3_ENDPOINT": s3_endpoint,
            "LORAFLEET_S3_ACCESS_KEY": S3_ACCESS_KEY,
            "LORAFLEET_S3_SECRET_KEY": S3_SECRET_KEY,
        },
        refresh_interval=2.0,
    )
    with Stack(config) as running:
        yield running


def _wait_for(what: str, stack: Stack, check: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        stack.check_alive()  # a crashed component fails the test now, with its log tail
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def _served(stack: Stack) -> list[str]:
    models = httpx.get(f"{stack.engine_url}/v1/models", headers=stack.engine_headers(), timeout=5)
    return [m["id"] for m in models.json()["data"]]


@pytest.mark.slow
def test_trained_adapter_flows_from_trainer_to_engine_and_out_again(
    stack: Stack, tmp_path: Path, redis_url: str, s3_endpoint: str, s3_bucket: str
) -> None:
    math = ADAPTERS[0]
    coords = f"acme/{math.name}@{math.version}"
    admin = RegistryClient(stack.api_url, token=stack.admin_token)
    admin.register_base_model(BASE, json.loads((stack.model_dir / "config.json").read_text()))
    admin.create_namespace("acme", approval_policy="manual")

    # The trainer: a real fine-tune, its output uploaded to S3, the event on Redis.
    result = train_lora(
        stack.model_dir, math.examples, tmp_path / "out", TrainConfig(steps=40, seed=1)
    )
    announce_job_completed(
        redis_url,
        job_id="job-e2e-1",
        namespace="acme",
        output_model=coords,
        base_model=BASE,
        output_dir=result.output_dir,
        upload_to=f"s3://{s3_bucket}-jobs/customizer",
        hyperparameters=result.config.to_dict(),
        metrics=result.metrics(),
        s3_endpoint=s3_endpoint,
        s3_access_key=S3_ACCESS_KEY,
        s3_secret_key=S3_SECRET_KEY,
        s3_secure=False,
    )

    def status() -> str | None:
        try:
            return admin.get_version("acme", math.name, math.version)["status"]
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    _wait_for("the adapter to be registered as pending", stack, lambda: status() == "pending")
    entity = admin.get_version("acme", math.name, math.version)
    assert entity["provenance"]["job_id"] == "job-e2e-1"
    # Manual namespace: registered, stored in S3, but not served before approval.
    s3 = Minio(s3_endpoint, access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY, secure=False)
    stored = {o.object_name for o in s3.list_objects(s3_bucket, prefix="sha256/", recursive=True)}
    assert {f"sha256/{f['sha256']}" for f in entity["files"]} <= stored
    assert coords not in _served(stack)

    admin.set_status(entity["id"], "ready", reason="reviewed")
    _wait_for("the engine to load the adapter", stack, lambda: coords in _served(stack))
    base_answer = complete(stack.engine_url, BASE, PROMPT, token=stack.admin_token)
    tuned_answer = complete(stack.engine_url, coords, PROMPT, token=stack.admin_token)
    assert tuned_answer.strip().endswith("#### 50")
    assert base_answer != tuned_answer

    admin.set_status(entity["id"], "archived", reason="retired")
    _wait_for("the engine to evict the adapter", stack, lambda: coords not in _served(stack))
    assert BASE in _served(stack)
    gone = httpx.post(
        f"{stack.engine_url}/v1/completions",
        json={"model": coords, "prompt": PROMPT, "max_tokens": 4},
        headers=stack.engine_headers(),
        timeout=30,
    )
    assert gone.status_code == 404
    admin.close()
