"""The reclaim sweep tells a lost task message from one waiting in a backlog.

Real PostgreSQL (the ingest records) and real Redis (the Celery broker's ingest queue); the
sweep runs in this process and no worker consumes the queue, so what waits in it stays
there. An ``enqueued`` record is stuck only when its message is gone: while the ingest queue
holds messages, the sweep neither re-enqueues copies (they only lengthen the queue) nor gives
up on the record (``failed``, ``retries_exhausted``, while its work was still queued: the
chaos suite's Redis-restart and S3-outage runs on a loaded machine lost events that way).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from celery import Celery
from kombu.exceptions import ChannelError
from support.services import fresh_postgres_database

from events import streams
from events.models import JobCompleted
from store.db import session_scope, upgrade
from store.models import IngestRecord, utcnow
from store.settings import StoreSettings
from workers import ingest, sweeps
from workers.celery_app import create_app, ingest_chain
from workers.runtime import Runtime
from workers.settings import WorkerSettings


@pytest.fixture(scope="module")
def db_url() -> Iterator[str]:
    with fresh_postgres_database("lorafleet_reclaim") as url:
        upgrade(url)
        yield url


@pytest.fixture
def rt(db_url: str, redis_url: str, tmp_path: Path) -> Iterator[Runtime]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    store = StoreSettings(
        database_url=db_url, redis_url=redis_url, blob_url=f"file://{tmp_path}", home=tmp_path
    )
    runtime = Runtime(WorkerSettings(stuck_received_s=60, stuck_enqueued_s=60), store)
    with session_scope(runtime.engine) as s:
        s.execute(IngestRecord.__table__.delete())  # type: ignore[attr-defined]
    yield runtime
    runtime.engine.dispose()
    client.flushdb()
    client.close()


@pytest.fixture
def app(rt: Runtime, redis_url: str) -> Celery:
    return create_app(rt.settings, redis_url=redis_url)


def _waiting(app: Celery) -> int:
    """Messages in the ingest queue (every priority), read from the broker."""
    with app.connection_for_read() as conn:
        try:
            return conn.default_channel.queue_declare(streams.INGEST_QUEUE, passive=True)[1]
        except ChannelError:  # kombu's answer for a queue that holds nothing
            return 0


def _event(name: str) -> JobCompleted:
    return JobCompleted(
        job_id=f"job-{uuid.uuid4().hex[:8]}",
        namespace="acme",
        output_model=f"acme/{name}@1.0.0",
        base_model="tiny-llama",
        artifact_uri="file:///nowhere/adapter",
    )


def _stale_record(rt: Runtime, event: JobCompleted, status: str, reclaims: int = 0) -> None:
    """A record last touched an hour ago (well past every cut-off)."""
    long_ago = utcnow() - timedelta(hours=1)
    payload = event.model_dump(mode="json") | {ingest.RECLAIMS_KEY: reclaims}
    with session_scope(rt.engine) as s:
        s.add(
            IngestRecord(
                event_id=event.event_id,
                job_id=event.job_id,
                status=status,
                received_at=long_ago,
                updated_at=long_ago,
                payload=payload,
            )
        )


def _record(rt: Runtime, event: JobCompleted) -> IngestRecord:
    with session_scope(rt.engine) as s:
        record = s.get(IngestRecord, event.event_id)
        assert record is not None
        return record


def test_enqueued_work_waiting_in_the_queue_is_neither_copied_nor_given_up(
    rt: Runtime, app: Celery
) -> None:
    waiting, exhausted = _event("waiting"), _event("exhausted")
    _stale_record(rt, waiting, "enqueued")
    _stale_record(rt, exhausted, "enqueued", reclaims=sweeps.MAX_RECLAIMS)
    for event in (waiting, exhausted):  # their messages, behind a backlog no worker took yet
        ingest_chain(app, event).apply_async()
    assert _waiting(app) == 2

    counts = sweeps.reclaim_stuck(rt, app)

    assert (counts["requeued"], counts["failed"]) == (0, 0)
    assert _waiting(app) == 2  # no copy added
    for event in (waiting, exhausted):
        record = _record(rt, event)
        assert (record.status, record.error_code) == ("enqueued", None)


def test_once_the_queue_is_empty_lost_messages_are_redriven_then_given_up(
    rt: Runtime, app: Celery
) -> None:
    lost, exhausted = _event("lost"), _event("lost-again")
    _stale_record(rt, lost, "enqueued")
    _stale_record(rt, exhausted, "enqueued", reclaims=sweeps.MAX_RECLAIMS)
    assert _waiting(app) == 0

    counts = sweeps.reclaim_stuck(rt, app)

    assert (counts["requeued"], counts["failed"]) == (1, 1)
    assert _waiting(app) == 1  # the lost one's new message
    assert _record(rt, lost).status == "enqueued"
    assert ingest.reclaims_of(_record(rt, lost)) == 1
    gave_up = _record(rt, exhausted)
    assert (gave_up.status, gave_up.error_code) == ("failed", "retries_exhausted")


def test_a_record_never_enqueued_is_redriven_even_behind_a_backlog(
    rt: Runtime, app: Celery
) -> None:
    # The bridge died between recording and enqueueing: no message of it exists anywhere.
    other, stranded = _event("other"), _event("stranded")
    ingest_chain(app, other).apply_async()
    _stale_record(rt, stranded, "received")

    counts = sweeps.reclaim_stuck(rt, app)

    assert counts["requeued"] == 1
    assert _waiting(app) == 2
    assert _record(rt, stranded).status == "enqueued"
