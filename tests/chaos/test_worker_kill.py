"""Fault 1: Celery worker nodes die (SIGKILL of the whole process group, prefork children
included) at random moments while announcements are processed, and are restarted.

Late acknowledgement keeps a killed task's message in Redis's unacked set; it comes back
after the visibility timeout and runs again. Every step being idempotent, each event must
still end as exactly one version."""

from __future__ import annotations

import random
import time

import pytest
from checker import record
from cluster import event_count

pytestmark = pytest.mark.chaos


def test_kill9_workers_mid_stream_registers_each_event_once(make_cluster, shared_redis_url):
    cluster = make_cluster(redis_url=shared_redis_url).start(workers=2, bridges=1)
    n = event_count()
    started = time.monotonic()
    thread, sent = cluster.announce_in_background(cluster.plan(n, "wk"), per_second=40)
    rng = random.Random(1)
    kills = 0
    # Kill a random node every 1.5-4 s until the announcements are out and a few kills
    # have landed; each node is restarted at once (as an orchestrator would).
    while kills < 8 and (thread.is_alive() or kills < 4):
        time.sleep(rng.uniform(1.5, 4.0))
        victim = rng.choice(cluster.workers)
        victim.kill9()
        cluster.fault("kill -9 worker")
        kills += 1
        victim.start(b" ready.")
    thread.join(timeout=300)
    assert not thread.is_alive(), "announcer stuck"
    assert len(sent) == n
    cluster.wait_settled(sent, timeout=240)
    report = record(cluster.check("kill -9 celery workers", sent, started))
    assert kills >= 4
    assert report.lost == [], report.summary() + cluster.logs_tail()
    assert report.duplicated == [], report.summary()
    assert report.unexpected == [], report.summary()
    assert report.missing_blobs == [] and report.missing_refresh == [], report.summary()
    assert report.outcomes["ready"] + report.outcomes["pending"] + report.outcomes["failed"] == n
