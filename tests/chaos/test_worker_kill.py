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

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(480)]


def test_kill9_workers_mid_stream_registers_each_event_once(shared_redis_url, make_cluster):
    cluster = make_cluster(redis_url=shared_redis_url).start(workers=2, bridges=1)
    n = event_count()
    started = time.monotonic()
    thread, sent = cluster.announce_in_background(cluster.plan(n, "wk"), per_second=40)
    rng = random.Random(1)
    kills = 0
    # Kill a random node every 1-3 s for as long as work is in flight (7 to 8 times); each
    # is restarted at once, as an orchestrator would, and may be killed again while it is
    # still starting. (Eight kills in a row, whatever the progress, landed on nodes still
    # starting on a loaded machine: nothing in flight was hit.)
    while kills < 8 and (thread.is_alive() or kills < 7 or cluster.final_records() < 0.9 * n):
        time.sleep(rng.uniform(1.0, 3.0))
        victim = rng.choice(cluster.workers)
        victim.kill9()
        cluster.fault("kill -9 worker")
        kills += 1
        victim.start()
    for worker in cluster.workers:
        worker.wait_ready(b" ready.")
    thread.join(timeout=300)
    assert not thread.is_alive(), "announcer stuck"
    assert len(sent) == n
    cluster.wait_settled(sent, timeout=240)
    report = record(cluster.check("kill -9 celery workers", sent, started))
    # Some kills landed on work in flight, which the broker handed out again.
    assert cluster.redelivered_tasks() >= 1, cluster.logs_tail()
    assert report.lost == [], report.summary() + cluster.logs_tail()
    assert report.duplicated == [], report.summary()
    assert report.unexpected == [], report.summary()
    assert report.missing_blobs == [] and report.missing_refresh == [], report.summary()
    assert kills >= 7
    assert report.outcomes["ready"] + report.outcomes["pending"] + report.outcomes["failed"] == n
