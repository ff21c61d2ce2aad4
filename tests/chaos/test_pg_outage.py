"""Fault 4: PostgreSQL is unreachable for ~10 s in the middle of a run.

Every lorafleet process reaches the database through a TCP proxy we cut: open connections
are reset and new ones refused. The bridge defers entries it cannot record (left pending,
reclaimed later); tasks retry database faults with back-off; the relay tries again on its
next tick. Nothing may be lost, failed for a transient reason, or registered twice."""

from __future__ import annotations

import time

import pytest
from checker import record
from cluster import event_count
from faults import TcpProxy

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(720)]

OUTAGE_S = 10.0  # seconds without a database


@pytest.fixture
def pg_proxy():
    proxy = TcpProxy(("127.0.0.1", 5432))
    try:
        yield proxy
    finally:
        proxy.close()


def test_postgres_unreachable_for_10s_tasks_retry_and_nothing_is_lost(
    shared_redis_url, make_cluster, chaos_db, pg_proxy
):
    through_proxy = chaos_db.replace("127.0.0.1:5432", pg_proxy.address)
    assert through_proxy != chaos_db
    cluster = make_cluster(redis_url=shared_redis_url, worker_db_url=through_proxy)
    cluster.start(workers=1, bridges=1)
    n = event_count()
    started = time.monotonic()
    thread, sent = cluster.announce_in_background(cluster.plan(n, "pg"), per_second=25)
    time.sleep(3.0)
    done_before = cluster.final_records()
    pg_proxy.cut()
    cluster.fault("postgres unreachable 10 s")
    time.sleep(OUTAGE_S)
    # Nothing can have finished while the database was away (the checker reads directly).
    done_during = cluster.final_records()
    pg_proxy.restore()
    thread.join(timeout=300)
    assert not thread.is_alive(), "announcer stuck"
    cluster.wait_settled(sent, timeout=300)
    report = record(cluster.check("postgres unreachable 10 s", sent, started))
    assert done_before < n and done_during <= done_before + 8  # the cut landed mid-run
    assert report.lost == [], report.summary() + cluster.logs_tail()
    assert report.duplicated == [], report.summary()
    assert report.unexpected == [], report.summary()
    assert report.missing_blobs == [] and report.missing_refresh == [], report.summary()
