"""Several ingest-bridge replicas on one consumer group share the stream without double
work: every entry is acknowledged by exactly one replica and every event registers once."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

from pipeline_harness import BASE_MODEL, Pipeline
from support.factories import random_adapter, write_hf_peft
from support.tiny import tiny_spec

from events import streams
from events.models import FleetRefresh, JobCompleted
from events.publisher import publish
from store.models import AdapterVersion
from workers.bridge import IngestBridge

EVENTS = 24


def test_bridge_replicas_share_the_stream_and_register_each_event_once(
    pipeline: Pipeline,
) -> None:
    directory = pipeline.artifacts / uuid.uuid4().hex
    write_hf_peft(random_adapter(tiny_spec(), seed=7), directory)
    base = pipeline.bridge
    small_batches = base.settings.model_copy(update={"bridge_batch": 2})
    replicas = [
        IngestBridge(base.rt, base.celery_app, settings=small_batches, consumer=f"replica-{i}")
        for i in range(3)
    ]
    threads = [threading.Thread(target=r.run, daemon=True) for r in replicas]
    for t in threads:
        t.start()
    handled_before = base.handled
    try:
        events = [
            JobCompleted(
                job_id=f"job-{i}",
                namespace="acme",
                output_model=f"acme/replica-bot-{i}@1.0.0",
                base_model=BASE_MODEL,
                artifact_uri=directory.as_uri(),
            )
            for i in range(EVENTS)
        ]
        for event in events:  # every event twice: a trainer retrying its XADD
            publish(pipeline.redis, streams.JOBS_STREAM, event)
            publish(pipeline.redis, streams.JOBS_STREAM, event)
        for event in events:
            assert pipeline.wait_ingest(event.event_id).status == "done"
        pipeline.wait_for(
            lambda: (
                not pipeline.redis.xpending(streams.JOBS_STREAM, streams.INGEST_GROUP)["pending"]
            )
        )
    finally:
        for r in replicas:
            r.stop.set()
        for t in threads:
            t.join(timeout=10)

    per_replica = [base.handled - handled_before] + [r.handled for r in replicas]
    assert sum(per_replica) == 2 * EVENTS, per_replica  # each entry acknowledged exactly once
    assert sum(1 for n in per_replica if n) >= 2, per_replica  # the work really was shared

    with pipeline.session() as s:
        rows = s.query(AdapterVersion).filter(AdapterVersion.name.like("replica-bot-%")).all()
    assert sorted(r.name for r in rows) == sorted(f"replica-bot-{i}" for i in range(EVENTS))
    pipeline.wait_for(lambda: all(pipeline.refresh_entries(r.id) for r in rows))
    loads = Counter(
        FleetRefresh.model_validate_json(fields["event"]).adapter_id
        for r in rows
        for _, fields in pipeline.refresh_entries(r.id)
    )
    assert set(loads) == {r.id for r in rows} and set(loads.values()) == {1}
