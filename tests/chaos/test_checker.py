"""The checker itself: a clean run passes it, and it notices what it must notice."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa
from checker import check, record, refresh_entries
from cluster import event_count

from events import streams
from store.models import AdapterVersion

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(480)]


def test_clean_run_has_every_outcome_exactly_once(shared_redis_url, make_cluster):
    cluster = make_cluster(redis_url=shared_redis_url).start(workers=1, bridges=1)
    n = min(event_count(), 60)
    started = time.monotonic()
    sent = cluster.announce(cluster.plan(n, "ok"))
    cluster.wait_settled(sent, timeout=150)
    report = record(cluster.check("no fault (control)", sent, started))
    assert report.ok, report.summary() + cluster.logs_tail()
    # The plan's mix: 1 in 10 refused, 2 in 10 waiting for approval, the rest ready.
    assert report.outcomes == {"ready": n - n // 10 - n // 5, "pending": n // 5, "failed": n // 10}


def test_checker_counts_lost_duplicated_and_unexpected(shared_redis_url, make_cluster):
    cluster = make_cluster(redis_url=shared_redis_url).start(workers=1, bridges=1)
    plan = cluster.plan(10, "ck")
    sent = cluster.announce(plan[:8])
    cluster.wait_settled(sent, timeout=120)
    never_sent = [announced for _, announced in plan[8:]]
    # An outcome other than announced: claim a ready one should have been pending.
    sent[0].expected = "pending"
    # A row nobody announced and a second version of announced coordinates' adapter.
    with cluster.engine.begin() as conn:
        row = conn.execute(
            sa.select(AdapterVersion).where(AdapterVersion.status == "ready").limit(1)
        ).one()
        values = {c.name: getattr(row, c.name) for c in AdapterVersion.__table__.columns}
        conn.execute(
            sa.insert(AdapterVersion).values({**values, "id": "ad_" + "f" * 32, "version": "9.9.9"})
        )
    # A second load of an adapter from another outbox row: a duplicated effect.
    outbox_id, load = next(e for e in refresh_entries(cluster.redis) if e[1]["action"] == "load")
    cluster.redis.xadd(
        streams.REFRESH_STREAM,
        {"event": json.dumps(load), streams.OUTBOX_ID_FIELD: f"{outbox_id}0"},
    )
    report = check(
        "checker self-test", cluster.engine, cluster.redis, cluster.blobs, [*sent, *never_sent]
    )
    assert len(report.lost) == 2, report.summary()
    assert len(report.duplicated) == 1, report.summary()
    assert any("nobody announced" in u for u in report.unexpected), report.summary()
    assert any("ready != pending" in u for u in report.unexpected), report.summary()
    # The extra ready version has no refresh: the checker sees that too.
    assert len(report.missing_refresh) == 1, report.summary()
