"""Fault 5: the S3 endpoint goes down during uploads and comes back on the same address.

Blobs go to a bucket on moto's S3 server (``s3://``, spoken to by the real ``minio`` SDK).
The server is stopped while packaging tasks are uploading, then started again: uploads fail
as ``TransientError``, tasks retry, and since a row is committed only after its blobs are
verified, no version may point at a missing object or be left half-registered."""

from __future__ import annotations

import time
import uuid

import pytest
from checker import record
from cluster import event_count
from faults import S3Server
from support.services import S3_ACCESS_KEY, S3_SECRET_KEY

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(720)]


@pytest.fixture
def s3_server():
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_s3_down_during_uploads_retries_then_registers_whole_versions(
    shared_redis_url, make_cluster, s3_server
):
    cluster = make_cluster(
        redis_url=shared_redis_url,
        blob_url=f"s3://chaos-{uuid.uuid4().hex[:10]}",
        extra_env={
            "LORAFLEET_S3_ENDPOINT": s3_server.endpoint,
            "LORAFLEET_S3_ACCESS_KEY": S3_ACCESS_KEY,
            "LORAFLEET_S3_SECRET_KEY": S3_SECRET_KEY,
            "LORAFLEET_S3_SECURE": "false",
        },
    )
    cluster.start(workers=1, bridges=1)
    n = event_count()
    started = time.monotonic()
    thread, sent = cluster.announce_in_background(cluster.plan(n, "s3"), per_second=25)
    for pause, down in ((2.5, 6.0), (3.0, 4.0)):  # two outages mid-run
        time.sleep(pause)
        s3_server.outage()
        cluster.fault("s3 endpoint down")
        time.sleep(down)
        s3_server.start()
    thread.join(timeout=300)
    assert not thread.is_alive(), "announcer stuck"
    cluster.wait_settled(sent, timeout=300)
    report = record(cluster.check("s3 endpoint down", sent, started))
    assert report.lost == [], report.summary() + cluster.logs_tail()
    assert report.duplicated == [], report.summary()
    assert report.unexpected == [], report.summary()
    assert report.missing_blobs == [] and report.missing_refresh == [], report.summary()
    worker_log = cluster.workers[0].log_path.read_text(errors="replace")
    assert "Retry in" in worker_log  # the outage was felt and retried, not skipped
