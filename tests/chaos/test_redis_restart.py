"""Fault 3: Redis (broker, ingest stream and refresh stream at once) is killed with SIGKILL
mid-run and restarted from its append-only file.

Our own ``redis-server`` runs with ``appendfsync always``: an XADD that was acknowledged to
the trainer is on disk. The bridge's consumer loop reconnects, Celery reconnects, tasks
whose Redis calls failed retry. Every announcement Redis acknowledged must come out."""

from __future__ import annotations

import time

import pytest
from checker import record
from cluster import event_count
from faults import RedisServer

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(720)]


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_kill9_and_restart_loses_no_acknowledged_event(own_redis, make_cluster):
    cluster = make_cluster(redis_url=own_redis.url).start(workers=1, bridges=1)
    n = event_count()
    started = time.monotonic()
    thread, sent = cluster.announce_in_background(cluster.plan(n, "rd"), per_second=25)
    for pause in (2.0, 4.0):  # two outages while announcements and tasks are in flight
        time.sleep(pause)
        own_redis.kill9()
        cluster.fault("kill -9 redis + AOF restart")
        time.sleep(1.5)  # down long enough for every client to notice
        own_redis.start()
    thread.join(timeout=300)
    assert not thread.is_alive(), "announcer stuck"
    assert len(sent) == n  # every announcement was acknowledged (after retries)
    cluster.wait_settled(sent, timeout=300)
    report = record(cluster.check("kill -9 redis (AOF restart)", sent, started))
    assert report.lost == [], report.summary() + cluster.logs_tail()
    assert report.duplicated == [], report.summary()
    assert report.unexpected == [], report.summary()
    assert report.missing_blobs == [] and report.missing_refresh == [], report.summary()
