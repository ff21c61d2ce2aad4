"""The real pipeline for tests: a fresh PostgreSQL database, Redis (the session's DB index),
a filesystem blob store, a real Celery worker subprocess (prefork, 2 processes) and an
ingest bridge running in a thread of the test process.

Everything here is module-scoped: one worker per test module.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from pipeline_harness import BASE_MODEL, Pipeline
from sqlmodel import Session
from support.processes import WORKER_READY, Proc, process_env, worker_argv
from support.services import S3_ACCESS_KEY, S3_SECRET_KEY, fresh_postgres_database

os.environ.setdefault("LORAFLEET_TEST_REDIS_DB", "6")


@pytest.fixture(scope="module")
def pipeline_db_url() -> Iterator[str]:
    """A brand-new, migrated PostgreSQL database for this module (dropped afterwards)."""
    from store.db import upgrade

    with fresh_postgres_database("lorafleet_pipe") as url:
        upgrade(url)
        yield url


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
    from support.tiny import tiny_hf_config

    from store import tenancy
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
    env = process_env(
        {
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
            **pipeline_env,
        }
    )
    engine = make_engine(pipeline_db_url)
    with Session(engine) as s:
        tenancy.create_namespace(s, "acme", approval_policy="auto", actor="test")
        tenancy.create_namespace(s, "gated", approval_policy="manual", actor="test")
        tenancy.register_base_model(s, BASE_MODEL, tiny_hf_config(), actor="test")
        s.commit()
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
    worker = Proc("worker", worker_argv(f"pipetest-{uuid.uuid4().hex[:6]}"), env, root)
    try:
        worker.start(WORKER_READY, timeout=90)
    except BaseException:
        worker.stop(timeout=20)
        raise
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
            worker_log=worker.log_path,
            bridge=bridge,
        )
    finally:
        bridge.stop.set()
        thread.join(timeout=10)
        worker.stop(timeout=20)
        runtime.engine.dispose()
        engine.dispose()
        client.flushdb()
        client.close()
