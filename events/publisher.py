"""Publishing events, and the one call a trainer needs: ``announce_job_completed``.

A trainer finishes a LoRA fine-tune, optionally has its output directory uploaded to the
artifacts location (a ``file://`` directory or ``s3://bucket/prefix``), and XADDs one
``customizer.job.completed`` event to the ingest stream. ``events`` imports nothing else of
lorafleet, so S3 credentials come from arguments or the ``LORAFLEET_S3_*`` variables
(``events.s3.S3Settings``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import redis
import structlog

from events import streams
from events.models import Event, JobCompleted

log = structlog.get_logger(__name__)


def publish(
    client: redis.Redis, stream: str, event: Event, *, extra: dict[str, str] | None = None
) -> str:
    """XADD ``event`` (plus ``extra`` fields) to ``stream`` with the standard length cap.

    Returns the entry id; when this returns the entry is in Redis.
    """
    fields = event.encode()
    if extra:
        fields.update(extra)
    entry_id = client.xadd(stream, fields, maxlen=streams.STREAM_MAXLEN, approximate=True)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def _files_of(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        raise FileNotFoundError(f"output directory {output_dir} does not exist")
    files = sorted(p for p in output_dir.rglob("*") if p.is_file() and not p.is_symlink())
    if not files:
        raise FileNotFoundError(f"output directory {output_dir} holds no files")
    return files


def upload_output(
    output_dir: Path,
    upload_to: str,
    key: str,
    *,
    s3_endpoint: str | None = None,
    s3_access_key: str | None = None,
    s3_secret_key: str | None = None,
    s3_secure: bool | None = None,
) -> str:
    """Copy every regular file of ``output_dir`` to ``<upload_to>/<key>/`` and return that
    location as an artifact URI (``file://...`` or ``s3://bucket/prefix/key``).

    Symlinks are not followed (they could point anywhere on the trainer's machine).
    """
    files = _files_of(output_dir)
    parsed = urlparse(upload_to)
    if parsed.scheme == "file":
        target = Path(unquote(parsed.path)) / key
        target.mkdir(parents=True, exist_ok=True)
        for path in files:
            dest = target / path.relative_to(output_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
        return target.resolve().as_uri()
    if parsed.scheme == "s3":
        from minio import Minio
        from pydantic import ValidationError

        from events.s3 import S3Settings

        try:
            env = S3Settings()
        except ValidationError as exc:
            raise ValueError(f"LORAFLEET_S3_*: {exc}") from None
        endpoint = s3_endpoint or env.endpoint
        if not endpoint:
            raise ValueError("s3:// upload needs an endpoint (LORAFLEET_S3_ENDPOINT)")
        client = Minio(
            endpoint,
            access_key=s3_access_key or env.access_key,
            secret_key=s3_secret_key or env.secret_key,
            secure=env.secure if s3_secure is None else s3_secure,
        )
        bucket = parsed.netloc
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        prefix = "/".join(p for p in (parsed.path.strip("/"), key) if p)
        for path in files:
            client.fput_object(
                bucket, f"{prefix}/{path.relative_to(output_dir).as_posix()}", str(path)
            )
        return f"s3://{bucket}/{prefix}"
    raise ValueError(f"cannot upload to {upload_to!r}: use file://DIR or s3://BUCKET/PREFIX")


def announce_job_completed(
    redis_url: str,
    *,
    job_id: str,
    namespace: str,
    output_model: str,
    base_model: str,
    output_dir: Path | str | None = None,
    artifact_uri: str | None = None,
    upload_to: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    dataset: str | None = None,
    metrics: dict[str, Any] | None = None,
    description: str | None = None,
    submitted_by: str | None = None,
    event_id: str | None = None,
    client: redis.Redis | None = None,
    **s3: Any,
) -> JobCompleted:
    """Announce a finished fine-tune on the ingest stream and return the event sent.

    Exactly one artifact source: ``artifact_uri`` (already uploaded), or ``output_dir`` with
    ``upload_to`` (uploaded first, under ``<job_id>/``), or a bare ``output_dir`` (announced
    as a ``file://`` URI; workers must have it under an allowed artifact root). The event is
    validated before anything is uploaded; when this returns, the entry is in Redis.
    ``s3`` takes ``s3_endpoint``, ``s3_access_key``, ``s3_secret_key``, ``s3_secure``.
    """
    if (artifact_uri is None) == (output_dir is None):
        raise ValueError("give exactly one of artifact_uri or output_dir")
    if upload_to is not None and output_dir is None:
        raise ValueError("upload_to needs output_dir")
    fields: dict[str, Any] = {
        "job_id": job_id,
        "namespace": namespace,
        "output_model": output_model,
        "base_model": base_model,
        "hyperparameters": hyperparameters or {},
        "dataset": dataset,
        "metrics": metrics or {},
        "description": description,
        "submitted_by": submitted_by,
    }
    if event_id is not None:
        fields["event_id"] = event_id
    # Validate the announcement before spending time on the upload.
    event = JobCompleted(artifact_uri=artifact_uri or "pending://upload", **fields)
    if output_dir is not None:
        source = Path(output_dir).resolve()
        if upload_to is not None:
            uri = upload_output(source, upload_to, job_id, **s3)
        else:
            _files_of(source)
            uri = source.as_uri()
        # Re-validate (model_copy would not) so the URI is held to the same limits.
        event = JobCompleted.model_validate({**event.model_dump(), "artifact_uri": uri})
    own_client = client is None
    conn = client or redis.Redis.from_url(redis_url)
    try:
        entry_id = publish(conn, streams.JOBS_STREAM, event)
    finally:
        if own_client:
            conn.close()
    log.info(
        "job_completed_announced",
        event_id=event.event_id,
        job_id=job_id,
        adapter=output_model,
        artifact_uri=event.artifact_uri,
        entry_id=entry_id,
    )
    return event
