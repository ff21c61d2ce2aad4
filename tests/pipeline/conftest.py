"""The real pipeline for tests: a fresh PostgreSQL database, Redis (the session's DB index),
a filesystem blob store, a real Celery worker subprocess (prefork, 2 processes) and an
ingest bridge running in a thread of the test process.

Everything here is module-scoped: one worker per test module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlmodel import Session
from support.services import S3_ACCESS_KEY, S3_SECRET_KEY, fresh_postgres_database

os.environ.setdefault("LORAFLEET_TEST_REDIS_DB", "6")

from pipeline_harness import BASE_MODEL, REPO, Pipeline  # noqa: E402


@pytest.fixture(scope="module")
def pipeline_db_url() -> Iterator[str]:
    """A brand-new, migrated PostgreSQL database for this module (dropped afterwards)."""
    from store.db import upgrade

    with fresh_postgres_database("lorafleet_pipe") as url:
        upgrade(url)
        yield url


def start_worker(env: dict[str, str], log_path: Path, name: str) -> subprocess.Popen[bytes]:
    """Start a real Celery worker (prefork, 2 processes) and wait until it is ready."""
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app:app",
            "worker",
            "-Q",
            "ingest,fleet,maintenance",
            "--concurrency=2",
            "--pool=prefork",
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "INFO",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"worker exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}"
            )
        if b" ready." in log_path.read_bytes():
            return proc
        time.sleep(0.2)
    stop_worker(proc)
    raise RuntimeError(f"worker not ready in 90s:\n{log_path.read_text()[-4000:]}")


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the worker we started (warm shutdown, then kill)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def pipeline_env() -> dict[str, str]:
    """Extra environment for this module's worker (a module overrides it, e.g. limits)."""
    return {}


@pytest.fixture(scope="module")
def pipeline(
    pipeline_db_url: str,
    redis_url: str,
    s3_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
    pipeline_env: dict[str, str],
) -> Iterator[Pipeline]:
    """The whole pipeline running against this module's database."""
    from factories import tiny_hf_config

    from store import registry
    from store.db import make_engine
    from store.settings import StoreSettings
    from workers.celery_app import create_app
    from workers.runtime import Runtime
    from workers.settings import WorkerSettings

    root = tmp_path_factory.mktemp("pipeline")
    artifacts, blob_dir, home = root / "artifacts", root / "blobs", root / "home"
    for d in (artifacts, blob_dir, home):
        d.mkdir()
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    env = {
        **os.environ,
        "LORAFLEET_DATABASE_URL": pipeline_db_url,
        "LORAFLEET_REDIS_URL": redis_url,
        "LORAFLEET_BLOB_URL": f"file://{blob_dir}",
        "LORAFLEET_HOME": str(home),
        "LORAFLEET_ARTIFACT_ROOTS": str(artifacts),
        "LORAFLEET_S3_ENDPOINT": s3_endpoint,
        "LORAFLEET_S3_ACCESS_KEY": S3_ACCESS_KEY,
        "LORAFLEET_S3_SECRET_KEY": S3_SECRET_KEY,
        "LORAFLEET_TASK_MAX_RETRIES": "3",
        "LORAFLEET_TASK_RETRY_BACKOFF_MAX": "2",
        "LORAFLEET_LOG_FORMAT": "json",
        "PYTHONPATH": str(REPO),
        **pipeline_env,
    }
    engine = make_engine(pipeline_db_url)
    with Session(engine) as s:
        registry.create_namespace(s, "acme", approval_policy="auto", actor="test")
        registry.create_namespace(s, "gated", approval_policy="manual", actor="test")
        registry.register_base_model(s, BASE_MODEL, tiny_hf_config(), actor="test")
    store_settings = StoreSettings(
        database_url=pipeline_db_url,
        redis_url=redis_url,
        blob_url=f"file://{blob_dir}",
        home=home,
    )
    worker_settings = WorkerSettings(
        artifact_roots=str(artifacts),
        bridge_claim_min_idle_ms=1500,
        bridge_claim_interval_s=0.5,
        bridge_block_ms=200,
        bridge_max_deliveries=3,
        bridge_consumer="test-bridge",
    )
    celery_app = create_app(worker_settings, redis_url=redis_url)
    worker = start_worker(env, root / "worker.log", f"pipetest-{uuid.uuid4().hex[:6]}")
    from workers.bridge import IngestBridge

    runtime = Runtime(worker_settings, store_settings)
    bridge = IngestBridge(runtime, celery_app, settings=worker_settings)
    thread = threading.Thread(target=bridge.run, name="ingest-bridge", daemon=True)
    thread.start()
    try:
        yield Pipeline(
            db_url=pipeline_db_url,
            redis_url=redis_url,
            artifacts=artifacts,
            blob_dir=blob_dir,
            engine=engine,
            redis=client,
            celery=celery_app,
            worker_log=root / "worker.log",
            bridge=bridge,
        )
    finally:
        bridge.stop.set()
        thread.join(timeout=10)
        stop_worker(worker)
        runtime.engine.dispose()
        engine.dispose()
        client.flushdb()
        client.close()
