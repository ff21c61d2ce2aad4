"""The event pipeline end to end: announcement → bridge → Celery worker → registry → outbox
relay → ``fleet.refresh``, on real Redis, PostgreSQL and a real worker subprocess."""

from __future__ import annotations

import json
import os
import pickle
import uuid
from pathlib import Path

import pytest
from pipeline_harness import BASE_MODEL, Pipeline
from support.factories import random_adapter, write_hf_peft
from support.services import S3_ACCESS_KEY, S3_SECRET_KEY
from support.tiny import tiny_spec

from events import streams
from events.dlq import list_dead_letters, replay
from events.models import FleetRefresh, JobCompleted
from events.publisher import announce_job_completed, publish
from store import registry, tenancy
from store.errors import SelfApproval
from store.models import AdapterVersion
from store.outbox import pending_outbox

TASKS = "workers.tasks"


def _adapter_dir(pipeline: Pipeline, seed: int = 0, **kwargs: object) -> Path:
    directory = pipeline.artifacts / uuid.uuid4().hex
    write_hf_peft(random_adapter(tiny_spec(), seed=seed, **kwargs), directory)  # type: ignore[arg-type]
    return directory


def _announce(
    pipeline: Pipeline, output_model: str, directory: Path, **kwargs: object
) -> JobCompleted:
    return announce_job_completed(
        pipeline.redis_url,
        job_id=f"job-{uuid.uuid4().hex[:8]}",
        namespace=output_model.split("/")[0],
        output_model=output_model,
        base_model=str(kwargs.pop("base_model", BASE_MODEL)),
        output_dir=directory,
        **kwargs,  # type: ignore[arg-type]
    )


def _version(pipeline: Pipeline, adapter_id: str) -> AdapterVersion:
    with pipeline.session() as s:
        row = s.get(AdapterVersion, adapter_id)
        assert row is not None
        return row


def _refresh(fields: dict[str, str]) -> FleetRefresh:
    event = FleetRefresh.model_validate_json(fields["event"])
    return event


def test_event_becomes_ready_version_and_load_refresh(pipeline: Pipeline) -> None:
    event = _announce(
        pipeline,
        "acme/support-bot@1.0.0",
        _adapter_dir(pipeline),
        dataset="tickets-v3",
        hyperparameters={"lr": 1e-4, "epochs": 2},
        metrics={"val_loss": 0.42},
    )
    record = pipeline.wait_ingest(event.event_id)
    assert record.status == "done", record.error_message
    version = _version(pipeline, record.adapter_id)
    assert (version.status, version.job_id, version.dataset) == (
        "ready",
        event.job_id,
        "tickets-v3",
    )
    assert version.hyperparameters == {"lr": 1e-4, "epochs": 2}
    assert version.metrics == {"val_loss": 0.42}
    entries = pipeline.wait_for(lambda: pipeline.refresh_entries(version.id))
    assert len(entries) == 1
    _, fields = entries[0]
    refresh = _refresh(fields)
    assert (refresh.action, refresh.adapter, refresh.base_model) == (
        "load",
        "acme/support-bot@1.0.0",
        BASE_MODEL,
    )
    assert refresh.generation == version.generation > 0
    assert fields[streams.OUTBOX_ID_FIELD].isdigit()


def test_four_eyes_holds_the_job_submitter_to_a_distinct_approver(pipeline: Pipeline) -> None:
    # The event names who launched the job; the version records them as its uploader, so
    # in a namespace that requires a distinct approver they cannot approve their own job.
    with pipeline.session() as s:
        tenancy.create_namespace(s, "bank", actor="test", require_distinct_approver=True)
        s.commit()
    alice, bob = "token:alice@bank", "token:bob@bank"
    event = _announce(pipeline, "bank/loans@1.0.0", _adapter_dir(pipeline), submitted_by=alice)
    record = pipeline.wait_ingest(event.event_id)
    assert record.status == "done", record.error_message
    version = _version(pipeline, record.adapter_id)
    assert (version.status, version.created_by) == ("pending", alice)
    with pipeline.session() as s:
        with pytest.raises(SelfApproval):
            registry.approve(s, version.id, actor=alice)
        s.rollback()
        registry.approve(s, version.id, actor=bob, reason="reviewed")
        s.commit()
    assert _version(pipeline, version.id).status == "ready"


def test_duplicate_event_registers_once(pipeline: Pipeline) -> None:
    directory = _adapter_dir(pipeline, seed=1)
    event = _announce(pipeline, "acme/dup-bot@1.0.0", directory)
    # The same announcement delivered again (a trainer retrying its XADD).
    publish(pipeline.redis, streams.JOBS_STREAM, event)
    record = pipeline.wait_ingest(event.event_id)
    assert record.status == "done"
    # Let the duplicate pass the bridge before judging.
    pipeline.wait_for(
        lambda: not pipeline.redis.xpending(streams.JOBS_STREAM, streams.INGEST_GROUP)["pending"]
    )
    pipeline.wait_for(lambda: pipeline.refresh_entries(record.adapter_id))
    pipeline.run_task(f"{TASKS}.relay")
    with pipeline.session() as s:
        versions = s.query(AdapterVersion).filter_by(namespace="acme", name="dup-bot").all()
    assert len(versions) == 1
    assert len(pipeline.refresh_entries(record.adapter_id)) == 1


def test_invalid_event_goes_to_dlq_and_replay_redrives_a_fixed_one(pipeline: Pipeline) -> None:
    directory = _adapter_dir(pipeline, seed=2)
    good = JobCompleted(
        job_id="job-dlq",
        namespace="acme",
        output_model="acme/dlq-bot@1.0.0",
        base_model=BASE_MODEL,
        artifact_uri=directory.as_uri(),
    )
    broken = good.model_dump(mode="json")
    broken["output_model"] = "acme/dlq-bot"  # no version
    entry_id = pipeline.redis.xadd(
        streams.JOBS_STREAM, {"event": json.dumps(broken), "trace": "t-1"}
    )

    def letter():
        return [d for d in list_dead_letters(pipeline.redis) if d.source_id == entry_id.decode()]

    (dead,) = pipeline.wait_for(letter)
    assert dead.reason.startswith("invalid_event:") and "output_model" in dead.reason
    assert dead.fields["trace"] == "t-1" and json.loads(dead.fields["event"]) == broken
    # Acknowledged: nothing of it is left pending in the group.
    assert pipeline.redis.xpending(streams.JOBS_STREAM, streams.INGEST_GROUP)["pending"] == 0

    replay(pipeline.redis, dead.id, event_json=good.model_dump_json())
    assert not letter()
    record = pipeline.wait_ingest(good.event_id)
    assert record.status == "done"
    assert _version(pipeline, record.adapter_id).status == "ready"


def _malicious_pickle_dir(pipeline: Pipeline) -> Path:
    directory = pipeline.artifacts / uuid.uuid4().hex
    write_hf_peft(random_adapter(tiny_spec(), seed=3), directory, safetensors=False)

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {directory / 'pwned'}",))

    (directory / "adapter_model.bin").write_bytes(pickle.dumps({"w": Exploit()}))
    return directory


def test_hostile_adapters_fail_with_their_code_and_the_next_event_still_registers(
    pipeline: Pipeline,
) -> None:
    nan = random_adapter(tiny_spec(), seed=4)
    nan.weights[(0, "q_proj")][0][0, 0] = float("nan")
    nan_dir = pipeline.artifacts / "nan"
    write_hf_peft(nan, nan_dir)
    wrong_shape_dir = pipeline.artifacts / "wrong-shape"
    write_hf_peft(random_adapter(tiny_spec(hidden_size=32), seed=5), wrong_shape_dir)
    pickle_dir = _malicious_pickle_dir(pipeline)
    cases = {
        "non_finite_weights": _announce(pipeline, "acme/nan@1.0.0", nan_dir),
        "shape_mismatch": _announce(pipeline, "acme/shape@1.0.0", wrong_shape_dir),
        "unsafe_pickle": _announce(pipeline, "acme/pickle@1.0.0", pickle_dir),
        "unknown_base_model": _announce(
            pipeline,
            "acme/nobase@1.0.0",
            _adapter_dir(pipeline, seed=6),
            base_model="no-such-model",
        ),
    }
    etc = JobCompleted(
        job_id="job-etc",
        namespace="acme",
        output_model="acme/etc@1.0.0",
        base_model=BASE_MODEL,
        artifact_uri="file:///etc",
    )
    publish(pipeline.redis, streams.JOBS_STREAM, etc)
    cases["artifact_not_allowed"] = etc
    after = _announce(pipeline, "acme/after-hostile@1.0.0", _adapter_dir(pipeline, seed=7))

    for code, event in cases.items():
        record = pipeline.wait_ingest(event.event_id)
        assert (record.status, record.error_code) == ("failed", code), record.error_message
        version = _version(pipeline, record.adapter_id)
        assert (version.status, version.status_code) == ("failed", code)
        assert version.status_reason
        assert not pipeline.refresh_entries(version.id)
    assert not (pickle_dir / "pwned").exists()
    record = pipeline.wait_ingest(after.event_id)
    assert record.status == "done"
    assert _version(pipeline, record.adapter_id).status == "ready"


def test_manual_approval_refreshes_only_after_approve_and_archive_evicts(
    pipeline: Pipeline,
) -> None:
    event = _announce(pipeline, "gated/reviewed@1.0.0", _adapter_dir(pipeline, seed=8))
    record = pipeline.wait_ingest(event.event_id)
    assert record.status == "done"
    assert _version(pipeline, record.adapter_id).status == "pending"
    pipeline.run_task(f"{TASKS}.relay")
    assert pipeline.refresh_entries(record.adapter_id) == []

    with pipeline.session() as s:
        registry.approve(s, record.adapter_id, actor="reviewer")
    pipeline.run_task(f"{TASKS}.relay")
    (load,) = pipeline.refresh_entries(record.adapter_id)
    assert _refresh(load[1]).action == "load"

    with pipeline.session() as s:
        registry.archive(s, record.adapter_id, actor="reviewer")
    pipeline.run_task(f"{TASKS}.relay")
    load_entry, evict_entry = pipeline.refresh_entries(record.adapter_id)
    evict = _refresh(evict_entry[1])
    assert evict.action == "evict"
    assert evict.generation > _refresh(load_entry[1]).generation


def test_unsent_outbox_row_is_published_by_the_relay_once(pipeline: Pipeline) -> None:
    event = _announce(pipeline, "gated/crashy@1.0.0", _adapter_dir(pipeline, seed=9))
    record = pipeline.wait_ingest(event.event_id)
    # A transition committed by a process that then died before relaying.
    with pipeline.session() as s:
        registry.approve(s, record.adapter_id, actor="reviewer")
    with pipeline.session() as s:
        unsent = [
            (r.id, r.stream) for r in pending_outbox(s, 1000) if record.adapter_id in r.payload
        ]
        s.rollback()
    assert unsent and pipeline.refresh_entries(record.adapter_id) == []

    assert pipeline.run_task(f"{TASKS}.relay") >= 1
    assert pipeline.run_task(f"{TASKS}.relay") == 0
    (entry,) = pipeline.refresh_entries(record.adapter_id)
    refresh_row_id = next(i for i, stream in unsent if stream == streams.REFRESH_STREAM)
    assert entry[1][streams.OUTBOX_ID_FIELD] == str(refresh_row_id)


def test_s3_artifact_is_fetched_from_the_object_store(
    pipeline: Pipeline, s3_endpoint: str, s3_bucket: str
) -> None:
    event = _announce(
        pipeline,
        "acme/from-s3@1.0.0",
        _adapter_dir(pipeline, seed=10),
        upload_to=f"s3://{s3_bucket}/runs",
        s3_endpoint=s3_endpoint,
        s3_access_key=S3_ACCESS_KEY,
        s3_secret_key=S3_SECRET_KEY,
        s3_secure=False,
    )
    assert event.artifact_uri == f"s3://{s3_bucket}/runs/{event.job_id}"
    record = pipeline.wait_ingest(event.event_id)
    assert record.status == "done", record.error_message
    version = _version(pipeline, record.adapter_id)
    assert version.status == "ready" and version.format == "hf_peft"


def test_entry_of_a_dead_consumer_is_reclaimed(pipeline: Pipeline) -> None:
    event = JobCompleted(
        job_id="job-orphan",
        namespace="acme",
        output_model="acme/orphan@1.0.0",
        base_model=BASE_MODEL,
        artifact_uri=_adapter_dir(pipeline, seed=11).as_uri(),
    )
    # A consumer reads the entry and dies (never acknowledges). MULTI makes it ours before
    # the live bridge can read it.
    pipe = pipeline.redis.pipeline(transaction=True)
    pipe.xadd(streams.JOBS_STREAM, event.encode())
    pipe.xreadgroup(streams.INGEST_GROUP, "dead-consumer", {streams.JOBS_STREAM: ">"}, count=1)
    entry_id, read = pipe.execute()
    assert read[0][1][0][0] == entry_id
    record = pipeline.wait_ingest(event.event_id)
    assert record.status == "done"
    pending = pipeline.redis.xpending_range(
        streams.JOBS_STREAM, streams.INGEST_GROUP, "-", "+", 100
    )
    assert entry_id not in [p["message_id"] for p in pending]


def test_entry_delivered_too_often_is_dead_lettered(pipeline: Pipeline) -> None:
    event = JobCompleted(
        job_id="job-poison",
        namespace="acme",
        output_model="acme/poison@1.0.0",
        base_model=BASE_MODEL,
        artifact_uri=_adapter_dir(pipeline, seed=12).as_uri(),
    )
    pipe = pipeline.redis.pipeline(transaction=True)
    pipe.xadd(streams.JOBS_STREAM, event.encode())
    pipe.xreadgroup(streams.INGEST_GROUP, "crashy-1", {streams.JOBS_STREAM: ">"}, count=1)
    entry_id, _ = pipe.execute()
    # Two more consumers took it and crashed too: delivered 3 times (the bridge allows 3).
    for consumer in ("crashy-2", "crashy-3"):
        pipeline.redis.xclaim(streams.JOBS_STREAM, streams.INGEST_GROUP, consumer, 0, [entry_id])

    def letter():
        return [d for d in list_dead_letters(pipeline.redis) if d.source_id == entry_id.decode()]

    (dead,) = pipeline.wait_for(letter, timeout=20)
    assert dead.deliveries == 4 and "delivered 4 times" in dead.reason
    with pipeline.session() as s:
        from store.models import IngestRecord

        assert s.get(IngestRecord, event.event_id) is None
    pending = pipeline.redis.xpending_range(
        streams.JOBS_STREAM, streams.INGEST_GROUP, "-", "+", 100
    )
    assert entry_id not in [p["message_id"] for p in pending]


def test_exhausted_retries_mark_the_ingest_record_failed(pipeline: Pipeline) -> None:
    # A host that never resolves (.invalid is reserved): a transient fault on every attempt.
    event = JobCompleted(
        job_id="job-unreachable",
        namespace="acme",
        output_model="acme/unreachable@1.0.0",
        base_model=BASE_MODEL,
        artifact_uri="https://artifacts.example.invalid/adapter.nemo",
    )
    publish(pipeline.redis, streams.JOBS_STREAM, event)
    record = pipeline.wait_ingest(event.event_id, timeout=120)
    assert (record.status, record.error_code) == ("failed", "retries_exhausted")
    assert "resolve" in record.error_message


def test_reclaim_sweep_redrives_a_record_the_bridge_never_enqueued(pipeline: Pipeline) -> None:
    from datetime import timedelta

    from store.models import IngestRecord, utcnow

    event = JobCompleted(
        job_id="job-stranded",
        namespace="acme",
        output_model="acme/stranded@1.0.0",
        base_model=BASE_MODEL,
        artifact_uri=_adapter_dir(pipeline, seed=13).as_uri(),
    )
    # A bridge recorded the event, then died before enqueueing (and its entry was lost).
    long_ago = utcnow() - timedelta(hours=1)
    with pipeline.session() as s:
        s.add(
            IngestRecord(
                event_id=event.event_id,
                job_id=event.job_id,
                status="received",
                received_at=long_ago,
                updated_at=long_ago,
                payload=event.model_dump(mode="json"),
            )
        )
        s.commit()
    counts = pipeline.run_task(f"{TASKS}.reclaim_stuck")
    assert counts["requeued"] >= 1
    record = pipeline.wait_ingest(event.event_id)
    assert record.status == "done"
    assert _version(pipeline, record.adapter_id).status == "ready"


def test_a_copy_of_finished_ingest_work_is_not_packaged_again(pipeline: Pipeline) -> None:
    # A second message for an event already done: the reclaim sweep re-drove it while the
    # first still waited in a backlog, or the broker redelivered it. Under a backlog such
    # copies are most of the queue; each one fetching, parsing and storing the adapter again
    # slowed the Redis-restart and S3-outage chaos runs until records were given up.
    from workers.celery_app import ingest_chain

    event = _announce(pipeline, "acme/copied@1.0.0", _adapter_dir(pipeline, seed=21))
    record = pipeline.wait_ingest(event.event_id)
    assert record.status == "done", record.error_message

    result = ingest_chain(pipeline.celery, event).apply_async().get(timeout=60)

    assert (result["adapter_id"], result["status"], result["created"]) == (
        record.adapter_id,
        "ready",
        False,
    )
    lines = pipeline.worker_log.read_text().splitlines()
    mine = [line for line in lines if event.event_id in line]
    assert sum("adapter_packaged" in line for line in mine) == 1
    assert sum("ingest_already_done" in line for line in mine) == 1
    assert len(pipeline.refresh_entries(record.adapter_id)) == 1
