"""Publishing announcements (with upload) and the dead-letter queue, on real Redis and moto."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from events import streams
from events.dlq import dead_letter, list_dead_letters, replay
from events.models import decode
from events.publisher import announce_job_completed

S3_KEY = "testing"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    c.delete(streams.JOBS_STREAM, streams.JOBS_DLQ_STREAM)
    yield c
    c.delete(streams.JOBS_STREAM, streams.JOBS_DLQ_STREAM)
    c.close()


def _output(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "adapter_config.json").write_text("{}")
    (out / "sub" / "weights.bin").write_bytes(b"\x00" * 1000)
    return out


def _only_entry(client: redis.Redis) -> dict[bytes, bytes]:
    (entry,) = client.xrange(streams.JOBS_STREAM)
    return entry[1]


def test_announce_uploads_to_a_directory_and_xadds(
    client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    dest = tmp_path / "artifacts"
    event = announce_job_completed(
        redis_url,
        job_id="job-1",
        namespace="acme",
        output_model="acme/bot@1.0.0",
        base_model="tiny",
        output_dir=_output(tmp_path),
        upload_to=dest.as_uri(),
        metrics={"loss": 0.1},
    )
    assert event.artifact_uri == (dest / "job-1").as_uri()
    assert (dest / "job-1" / "sub" / "weights.bin").stat().st_size == 1000
    assert decode(_only_entry(client)) == event


def test_announce_uploads_to_s3(
    client: redis.Redis, redis_url: str, tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    from minio import Minio

    event = announce_job_completed(
        redis_url,
        job_id="job-2",
        namespace="acme",
        output_model="acme/bot@1.0.1",
        base_model="tiny",
        output_dir=_output(tmp_path),
        upload_to=f"s3://{s3_bucket}/runs",
        s3_endpoint=s3_endpoint,
        s3_access_key=S3_KEY,
        s3_secret_key=S3_KEY,
        s3_secure=False,
    )
    assert event.artifact_uri == f"s3://{s3_bucket}/runs/job-2"
    minio = Minio(s3_endpoint, access_key=S3_KEY, secret_key=S3_KEY, secure=False)
    names = sorted(
        o.object_name for o in minio.list_objects(s3_bucket, prefix="runs/", recursive=True)
    )
    assert names == ["runs/job-2/adapter_config.json", "runs/job-2/sub/weights.bin"]
    assert decode(_only_entry(client)).artifact_uri == event.artifact_uri


def test_invalid_announcement_is_refused_before_upload(
    client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    dest = tmp_path / "artifacts"
    with pytest.raises(ValueError, match="namespace/name@version"):
        announce_job_completed(
            redis_url,
            job_id="job-3",
            namespace="acme",
            output_model="acme/bot",
            base_model="tiny",
            output_dir=_output(tmp_path),
            upload_to=dest.as_uri(),
        )
    assert not dest.exists()
    assert client.xlen(streams.JOBS_STREAM) == 0


def test_dead_letter_acks_and_replay_moves_back(client: redis.Redis) -> None:
    client.xgroup_create(streams.JOBS_STREAM, streams.INGEST_GROUP, id="0", mkstream=True)
    entry_id = client.xadd(streams.JOBS_STREAM, {"event": "{not json", "trace": "abc"})
    client.xreadgroup(streams.INGEST_GROUP, "c1", {streams.JOBS_STREAM: ">"})
    assert client.xpending(streams.JOBS_STREAM, streams.INGEST_GROUP)["pending"] == 1

    dead_letter(
        client,
        entry_id=entry_id,
        fields={b"event": b"{not json", b"trace": b"abc"},
        reason="invalid_event: x",
        deliveries=2,
    )
    assert client.xpending(streams.JOBS_STREAM, streams.INGEST_GROUP)["pending"] == 0
    (letter,) = list_dead_letters(client)
    assert (letter.reason, letter.source_id, letter.deliveries) == (
        "invalid_event: x",
        entry_id.decode(),
        2,
    )
    assert letter.fields == {"event": "{not json", "trace": "abc"}

    new_id = replay(client, letter.id, event_json='{"fixed": true}')
    assert list_dead_letters(client) == []
    (last_id, fields) = client.xrange(streams.JOBS_STREAM, "-", "+")[-1]
    assert last_id.decode() == new_id
    assert fields == {b"event": b'{"fixed": true}', b"trace": b"abc"}
    with pytest.raises(KeyError):
        replay(client, letter.id)


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """The CLI reconfigures structlog onto CliRunner's stderr, closed after each invoke;
    put the previous configuration back so later tests can still log."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_cli_publish_and_dlq(
    client: redis.Redis, redis_url: str, tmp_path: Path, keep_logging: None
) -> None:
    from lorafleet.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "events",
            "publish-job-completed",
            "--job-id",
            "j9",
            "--output-model",
            "acme/cli@1.0.0",
            "--base-model",
            "tiny",
            "--artifact-uri",
            "file:///data/j9",
            "--redis-url",
            redis_url,
            "--metrics",
            '{"loss": 0.5}',
        ],
    )
    assert result.exit_code == 0, result.output
    assert decode(_only_entry(client)).metrics == {"loss": 0.5}

    entry_id = client.xadd(streams.JOBS_STREAM, {"event": "broken"})
    dead_letter(
        client, entry_id=entry_id, fields={"event": "broken"}, reason="invalid_event: y", group=None
    )
    listed = runner.invoke(app, ["events", "dlq", "list", "--json", "--redis-url", redis_url])
    assert listed.exit_code == 0
    (row,) = [json.loads(line) for line in listed.output.splitlines() if line.startswith("{")]
    assert row["reason"] == "invalid_event: y"
    replayed = runner.invoke(app, ["events", "dlq", "replay", row["id"], "--redis-url", redis_url])
    assert replayed.exit_code == 0 and "replayed" in replayed.output
    assert list_dead_letters(client) == []
    missing = runner.invoke(app, ["events", "dlq", "replay", row["id"], "--redis-url", redis_url])
    assert missing.exit_code == 1
