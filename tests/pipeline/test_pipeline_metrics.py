"""The pipeline's processes expose Prometheus metrics (issue 9, item 20): a real
``lorafleet bridge``, ``lorafleet worker`` (prefork, 2 processes) and ``lorafleet beat``,
each with a metrics port, over a fresh PostgreSQL database and Redis. What each exposes is
``docs/METRICS.md``'s table; DLQ depth and outbox lag are the stores' truth at scrape
time; ingest latency is observed in the worker's pool processes and served by its parent."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis
from pipeline_harness import BASE_MODEL
from prometheus_client.parser import text_string_to_metric_families
from support.factories import random_adapter, write_hf_peft
from support.metrics_reference import assert_matches_reference
from support.processes import (
    BRIDGE_READY,
    WORKER_READY,
    Proc,
    lorafleet_argv,
    process_env,
    wait_for,
)
from support.services import free_port, fresh_postgres_database
from support.tiny import tiny_hf_config, tiny_spec

from events import streams
from events.models import JobCompleted
from events.publisher import announce_job_completed

PROCESSES = ("bridge", "worker", "beat")


@dataclass
class Stack:
    """The three processes' metrics URLs, and what the tests drive them with."""

    urls: dict[str, str]
    redis_url: str
    redis: redis.Redis
    db_url: str
    artifacts: Path

    def scrape(self, process: str) -> str:
        return httpx.get(self.urls[process], timeout=10).text

    def value(self, process: str, sample: str, **labels: str) -> float | None:
        for family in text_string_to_metric_families(self.scrape(process)):
            for s in family.samples:
                if s.name == sample and s.labels == labels:
                    return s.value
        return None

    def announce(self, coordinates: str, seed: int) -> JobCompleted:
        directory = self.artifacts / uuid.uuid4().hex
        write_hf_peft(random_adapter(tiny_spec(), seed=seed), directory)
        return announce_job_completed(
            self.redis_url,
            job_id=f"job-{uuid.uuid4().hex[:8]}",
            namespace=coordinates.split("/")[0],
            output_model=coordinates,
            base_model=BASE_MODEL,
            output_dir=directory,
        )

    def ingest_status(self, event_id: str) -> str | None:
        import sqlalchemy as sa

        from store.db import make_engine
        from store.models import IngestRecord

        engine = make_engine(self.db_url)
        try:
            with engine.connect() as conn:
                query = sa.select(IngestRecord.status).where(IngestRecord.event_id == event_id)
                return conn.execute(query).scalar()
        finally:
            engine.dispose()


def _seed(db_url: str) -> None:
    from sqlmodel import Session

    from store import tenancy
    from store.db import make_engine, upgrade

    upgrade(db_url)
    engine = make_engine(db_url)
    with Session(engine) as s:
        tenancy.create_namespace(s, "acme", approval_policy="auto", actor="test")
        tenancy.register_base_model(s, BASE_MODEL, tiny_hf_config(), actor="test")
        s.commit()
    engine.dispose()


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("metrics-stack")
    artifacts = root / "artifacts"
    artifacts.mkdir()
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    ports = {name: free_port() for name in PROCESSES}
    with fresh_postgres_database("lorafleet_metrics") as db_url:
        _seed(db_url)
        env = process_env(
            {
                "LORAFLEET_DATABASE_URL": db_url,
                "LORAFLEET_REDIS_URL": redis_url,
                "LORAFLEET_BLOB_URL": f"file://{root / 'blobs'}",
                "LORAFLEET_HOME": str(root / "home"),
                "LORAFLEET_ARTIFACT_ROOTS": str(artifacts),
                "LORAFLEET_LOG_FORMAT": "json",
            }
        )
        name = f"metrics-{uuid.uuid4().hex[:6]}"
        worker_argv = lorafleet_argv("worker", "-n", f"{name}@%h", "--metrics-port")
        procs = [
            # The bridge takes its port from the environment, the others from the option.
            Proc("bridge", lorafleet_argv("bridge", "--consumer", name), {
                **env, "LORAFLEET_METRICS_PORT": str(ports["bridge"])}, root),
            Proc("worker", [*worker_argv, str(ports["worker"])], env, root),
            Proc("beat", lorafleet_argv(
                "beat", "--schedule", str(root / "beat"), "--metrics-port", str(ports["beat"])
            ), env, root),
        ]  # fmt: skip
        try:
            procs[0].start(BRIDGE_READY, timeout=90)
            procs[1].start(WORKER_READY, timeout=90)
            procs[2].start()
            urls = {n: f"http://127.0.0.1:{ports[n]}/metrics" for n in PROCESSES}
            for n, url in urls.items():
                wait_for(lambda u=url: httpx.get(u, timeout=2).status_code == 200, 60, n)
            yield Stack(urls, redis_url, client, db_url, artifacts)
        finally:
            for proc in procs:
                proc.stop(timeout=20)
            client.flushdb()
            client.close()


@pytest.fixture(scope="module")
def ingested(stack: Stack) -> tuple[JobCompleted, JobCompleted]:
    """One ingest done, one failed (its namespace does not exist)."""
    done = stack.announce("acme/metered@1.0.0", seed=1)
    failed = stack.announce("ghost/metered@1.0.0", seed=2)
    for event, status in ((done, "done"), (failed, "failed")):
        wait_for(lambda e=event, s=status: stack.ingest_status(e.event_id) == s, 90, status)
    return done, failed


def test_ingest_latency_is_observed_in_the_pool_and_served_by_the_parent(
    stack: Stack, ingested: tuple[JobCompleted, JobCompleted]
) -> None:
    count = "lorafleet_ingest_latency_seconds_count"
    for outcome in ("done", "failed"):
        wait_for(lambda o=outcome: stack.value("worker", count, outcome=o), 30, outcome)
    total = stack.value("worker", "lorafleet_ingest_latency_seconds_sum", outcome="done")
    assert total is not None and 0 < total < 90


def test_each_process_exposes_what_the_reference_lists(
    stack: Stack, ingested: tuple[JobCompleted, JobCompleted]
) -> None:
    wait_for(lambda: stack.value("worker", "lorafleet_ingest_latency_seconds_count", outcome="done"), 30, "latency")  # fmt: skip
    for process in PROCESSES:
        assert_matches_reference(stack.scrape(process), process)


def test_dlq_depth_is_the_dead_letter_streams_length(stack: Stack) -> None:
    stack.redis.xadd(streams.JOBS_STREAM, {"event": "not json"})
    wait_for(lambda: stack.redis.xlen(streams.JOBS_DLQ_STREAM) >= 1, 30, "dead-lettered")
    depth = stack.redis.xlen(streams.JOBS_DLQ_STREAM)
    for process in PROCESSES:
        assert stack.value(process, "lorafleet_dlq_depth") == depth, process


def test_outbox_lag_is_the_oldest_unsent_row_and_clears_once_relayed(stack: Stack) -> None:
    import sqlalchemy as sa

    from store.db import make_engine
    from store.models import OutboxRow

    # Holding the relay's lock keeps beat's relay from sending the row while we look.
    stack.redis.set(streams.RELAY_LOCK_KEY, "test", px=60_000)
    engine = make_engine(stack.db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.insert(OutboxRow).values(
                    created_at=datetime.now(UTC) - timedelta(seconds=300),
                    stream=f"{streams.PREFIX}:test:metrics",
                    payload="{}",
                )
            )
        for process in PROCESSES:
            assert (stack.value(process, "lorafleet_outbox_pending") or 0) >= 1, process
            age = stack.value(process, "lorafleet_outbox_oldest_pending_age_seconds")
            assert age is not None and 300 <= age < 400, (process, age)
    finally:
        engine.dispose()
        stack.redis.delete(streams.RELAY_LOCK_KEY)
    wait_for(lambda: stack.value("beat", "lorafleet_outbox_pending") == 0, 60, "relayed")
    assert stack.value("bridge", "lorafleet_outbox_oldest_pending_age_seconds") == 0
