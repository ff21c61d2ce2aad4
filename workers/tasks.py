"""The ingest of an announcement and the periodic sweeps.

One task, ``ingest``, does the whole ingest of an announcement: package (fetch, parse,
validate, store blobs), validate (re-check what can change after packaging), register (one
transaction: the version, its outbox rows and the ingest record ``done``), then relays the
outbox at once, so its ``fleet.refresh`` entry goes out without another task hop, a relay
lock wait or beat's tick. Every step is idempotent, so a retry re-runs it from the top.
The steps are also tasks of their own (``package``, ``validate``, ``register``,
``broadcast``): a chain of them (messages queued by an older release) still runs.

Task bodies hold the happy path only. Retry, logging context and failure bookkeeping are
declared once on the base classes: ``PipelineTask`` retries transient faults with bounded,
jittered exponential back-off and binds ``event_id``/``job_id``/``adapter`` to every log
line; ``IngestTask`` additionally turns a final failure (an invalid adapter, a conflict, or
retries exhausted) into a ``failed`` version and ingest record, so nothing is dropped
silently.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import kombu.exceptions
import redis
import sqlalchemy as sa
import sqlalchemy.exc
import structlog
from celery import Task, signals

from events.models import JobCompleted
from store import catalog, packaging, registry
from store.blobs import run_blob_gc
from store.errors import (
    AdapterInvalid,
    LorafleetError,
    NotFound,
    QuotaExceeded,
    TransientError,
    VersionConflict,
)
from store.heap import freeze_startup_heap
from store.models import AdapterVersion, IngestRecord, Package, PackageFile, Provenance
from workers import ingest, stages, sweeps
from workers.celery_app import TASK_MODULE, app
from workers.fetch import fetch_artifact
from workers.relay import relay_outbox
from workers.runtime import get_runtime
from workers.settings import get_worker_settings

log = structlog.get_logger(__name__)

ACTOR = "lorafleet-pipeline"
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
    kombu.exceptions.OperationalError,
    httpx.TransportError,
    ConnectionError,
    TimeoutError,
)
# Outcomes, not bugs: logged without a traceback and never retried.
FINAL_ERRORS: tuple[type[BaseException], ...] = (
    AdapterInvalid,
    VersionConflict,
    QuotaExceeded,
    NotFound,
)
# Failures that leave a ``failed`` version visible through the API (the files were refused).
VERSION_FAILURES: tuple[type[BaseException], ...] = (AdapterInvalid, QuotaExceeded)

_settings = get_worker_settings()


def _event_of(ctx: Any) -> JobCompleted | None:
    if isinstance(ctx, dict) and isinstance(ctx.get("event"), dict):
        try:
            return JobCompleted.model_validate(ctx["event"])
        except ValueError:
            return None
    return None


class PipelineTask(Task):
    """Retries transient faults (bounded, exponential, jittered) and binds log context."""

    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = True
    retry_backoff_max = _settings.task_retry_backoff_max
    retry_jitter = True
    max_retries = _settings.task_max_retries
    throws = FINAL_ERRORS
    acks_late = True
    reject_on_worker_lost = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        event = _event_of(args[0]) if args else None
        context: dict[str, Any] = {
            "task": self.name.rsplit(".", 1)[-1],
            "attempt": self.request.retries,
        }
        if event is not None:
            context.update(event_id=event.event_id, job_id=event.job_id, adapter=event.output_model)
        with structlog.contextvars.bound_contextvars(**context):
            return super().__call__(*args, **kwargs)


class IngestTask(PipelineTask):
    """A step of the ingest chain: a final failure is recorded, never lost.

    ``on_failure`` runs once the step has failed for good: at once for a final error, after
    its retries are exhausted for a transient fault (a retry is not a failure). Celery
    hands it a pickled copy of the exception; typed errors survive that with their code
    (``LorafleetError.__reduce__``), and ``einfo.type`` is the original class.
    """

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        event = _event_of(args[0]) if args else None
        if event is not None:
            self._record(event, exc, getattr(einfo, "type", None) or type(exc))

    def _record(self, event: JobCompleted, exc: Exception, exc_type: type) -> None:
        if issubclass(exc_type, TRANSIENT_ERRORS):
            code, message = "retries_exhausted", f"{exc_type.__name__}: {exc}"
        elif isinstance(exc, LorafleetError):
            code, message = exc.code, exc.message
        else:
            code, message = "internal_error", f"{exc_type.__name__}: {exc}"
        try:
            recorded = record_pipeline_failure(
                event, code, message, version_failed=issubclass(exc_type, VERSION_FAILURES)
            )
        except Exception as record_exc:  # noqa: BLE001 - the reclaim sweep re-drives it later
            log.error(
                "ingest_failure_not_recorded",
                event_id=event.event_id,
                code=code,
                error=str(record_exc),
            )
            return
        log.warning(
            "ingest_failed" if recorded else "ingest_rerun_failed_after_done",
            event_id=event.event_id,
            adapter=event.output_model,
            code=code,
            message=message[:500],
        )


def _uploader(event: JobCompleted) -> str:
    """The version's ``created_by``: who launched the job when the event says so (four-eyes
    approval compares it with the approver), else the pipeline itself."""
    return event.submitted_by or ACTOR


def _provenance(event: JobCompleted) -> Provenance:
    return Provenance(
        job_id=event.job_id,
        dataset=event.dataset,
        hyperparameters=dict(event.hyperparameters),
        metrics=dict(event.metrics),
    )


def record_pipeline_failure(
    event: JobCompleted, code: str, message: str, *, version_failed: bool
) -> bool:
    """Mark ``event``'s ingest record ``failed`` (and, when its files were refused, its
    version ``failed`` with ``code``), in one transaction; returns whether it did.

    A record already ``done`` is left as it is (returns False): a failing re-run of a
    finished event (the reclaim sweep re-drove a slow one, then the trainer removed its
    artifact) never undoes what was registered."""
    namespace, name, version = event.coordinates()
    adapter_id = None
    with get_runtime().session() as session:
        if ingest.status_of(session, event.event_id) == ingest.State.DONE:
            return False
        if version_failed:
            try:
                row = registry.record_failure(
                    session,
                    namespace=namespace,
                    name=name,
                    version=version,
                    base_model=event.base_model,
                    code=code,
                    message=message,
                    provenance=_provenance(event),
                    actor=_uploader(event),
                )
                adapter_id = row.id
            except LorafleetError as exc:
                # A valid version already holds the coordinates, or no such namespace (both
                # raised before anything is written): the ingest record alone carries it.
                log.info("version_failure_not_recorded", reason=exc.code)
        return ingest.set_status(
            session,
            event.event_id,
            ingest.State.FAILED,
            only_from=ingest.NOT_DONE,
            adapter_id=adapter_id,
            error_code=code,
            error_message=message[:4000],
        )


def package_to_dict(package: Package) -> dict[str, Any]:
    return asdict(package)


def package_from_dict(data: dict[str, Any]) -> Package:
    return Package(**{**data, "files": tuple(PackageFile(**f) for f in data["files"])})


def _require_namespace(session: Any, name: str) -> None:
    """``NotFound`` with code ``namespace_not_found`` unless namespace ``name`` exists (the
    ingest record then says which of the event's references is missing)."""
    try:
        catalog.get_namespace(session, name)
    except NotFound as exc:
        raise NotFound(exc.message, code="namespace_not_found") from None


def route_to_evaluation(task: Task, ctx: dict[str, Any]) -> dict[str, Any]:
    """``workers.evaluate.route_to_evaluation`` (imported late: that module imports this one)."""
    from workers.evaluate import route_to_evaluation as route

    return route(task, ctx)


def _trace(event: JobCompleted) -> stages.StageTrace:
    return stages.StageTrace(event.event_id, enabled=_settings.stage_trace)


_NO_TRACE = stages.StageTrace("", enabled=False)


@app.task(base=IngestTask, bind=True, name=f"{TASK_MODULE}.ingest")
def ingest_event(self: Task, ctx: dict[str, Any]) -> dict[str, Any]:
    """The whole ingest of one announcement (see the module docstring); returns what
    ``register`` returns. Its ``fleet.refresh`` is relayed before it returns (or, when
    another relay holds the lock, by that relay before it lets go)."""
    event = JobCompleted.model_validate(ctx["event"])
    earlier = _earlier_result(ctx, event)
    if earlier is not None:  # a redelivered or re-driven copy of finished work
        log.info("ingest_already_done", adapter_id=earlier["adapter_id"])
        return earlier
    trace = _trace(event)
    started = time.time()
    ctx = run_package(ctx, trace)
    ctx = run_validate(ctx, trace)
    # Hook: after validate, before register / approval (an evaluation step goes here).
    ctx = route_to_evaluation(self, ctx)  # the eval queue, when the namespace has a policy
    result = run_register(ctx, trace)
    with trace.stage("relay"):
        _relay_now()
    trace.mark("task", started)
    trace.flush(get_runtime().redis)
    return result


def _earlier_result(ctx: dict[str, Any], event: JobCompleted) -> dict[str, Any] | None:
    """What ``register`` returned for ``event`` when its ingest record is already ``done``,
    else None. A copy of the message (redelivered, or re-driven by the reclaim sweep while
    the first was still queued) then costs one read instead of fetching, parsing and storing
    the adapter again: under a backlog those copies are most of the queue."""
    with get_runtime().session() as session:
        row = session.execute(
            sa.select(IngestRecord.adapter_id, AdapterVersion.status)
            .outerjoin(AdapterVersion, AdapterVersion.id == IngestRecord.adapter_id)
            .where(IngestRecord.event_id == event.event_id)
            .where(IngestRecord.status == ingest.State.DONE)
        ).first()
    if row is None or row.adapter_id is None:
        return None
    return {
        "event": ctx["event"],
        "adapter_id": row.adapter_id,
        "status": row.status,
        "created": False,
    }


def _relay_now() -> None:
    """Publish the outbox right after a commit. A failure is logged, not raised: the rows
    are committed, and beat's relay tick publishes them (the outbox's guarantee)."""
    rt = get_runtime()
    try:
        relay_outbox(rt.session, rt.redis, batch=rt.settings.relay_batch)
    except TRANSIENT_ERRORS as exc:
        log.warning("relay_after_commit_failed", error=str(exc)[:500])


@app.task(base=IngestTask, bind=True, name=f"{TASK_MODULE}.package")
def package(self: Task, ctx: dict[str, Any]) -> dict[str, Any]:
    """Fetch the artifact, detect its format, convert it and store its blobs."""
    return run_package(ctx, _NO_TRACE)


def run_package(ctx: dict[str, Any], trace: stages.StageTrace) -> dict[str, Any]:
    """The package step: ``ctx`` plus its ``package``."""
    event = JobCompleted.model_validate(ctx["event"])
    rt = get_runtime()
    with trace.stage("lookup_commit"), rt.session() as session:
        ingest.touch(session, event.event_id)
        _require_namespace(session, event.namespace)
        spec = catalog.get_base_model_spec(session, event.base_model)
    with tempfile.TemporaryDirectory(prefix="lorafleet-fetch-") as tmp:
        with trace.stage("fetch"):
            source = fetch_artifact(event.artifact_uri, Path(tmp), rt.settings, rt.store)
        pkg = packaging.prepare_package(rt.blobs, source, spec, rt.limits, stage=trace.stage)
    log.info("adapter_packaged", format=pkg.source_format, rank=pkg.rank, bytes=pkg.total_bytes)
    return {**ctx, "package": package_to_dict(pkg)}


@app.task(base=IngestTask, bind=True, name=f"{TASK_MODULE}.validate")
def validate(self: Task, ctx: dict[str, Any]) -> dict[str, Any]:
    """Re-check only what can change after packaging: the base model as registered now,
    and that every blob the package names is still stored (GC could have collected one).
    Whether the adapter fits (rank, modules, shapes) was decided by packaging, through
    ``store.formats.validate_adapter``, the one adapter-fit rule."""
    return route_to_evaluation(self, run_validate(ctx, _NO_TRACE))


def run_validate(ctx: dict[str, Any], trace: stages.StageTrace) -> dict[str, Any]:
    """The validate step; returns ``ctx`` unchanged or raises ``AdapterInvalid``."""
    event = JobCompleted.model_validate(ctx["event"])
    pkg = package_from_dict(ctx["package"])
    rt = get_runtime()
    with trace.stage("recheck"), rt.session() as session:
        ingest.touch(session, event.event_id)
        spec = catalog.get_base_model_spec(session, event.base_model)
    if pkg.manifest.get("base_model_spec") != spec.to_dict():
        raise AdapterInvalid(
            "shape_mismatch", f"base model {event.base_model!r} changed since packaging"
        )
    for f in pkg.files:
        if not rt.blobs.exists(f.blob_key):
            raise AdapterInvalid("missing_file", f"blob {f.blob_key} of {f.path} is not stored")
    return ctx


@app.task(base=IngestTask, bind=True, name=f"{TASK_MODULE}.register")
def register(self: Task, ctx: dict[str, Any]) -> dict[str, Any]:
    """Commit the version (pending or ready per namespace policy) and mark the ingest record
    done, in one transaction."""
    return run_register(ctx, _NO_TRACE)


def run_register(ctx: dict[str, Any], trace: stages.StageTrace) -> dict[str, Any]:
    """The register step (one transaction); returns the event, ``adapter_id``, ``status``
    and whether the version was ``created``."""
    event = JobCompleted.model_validate(ctx["event"])
    pkg = package_from_dict(ctx["package"])
    namespace, name, version = event.coordinates()
    with trace.stage("register_commit"), get_runtime().session() as session:
        row, created = registry.commit_version(
            session,
            pkg,
            namespace=namespace,
            name=name,
            version=version,
            base_model=event.base_model,
            provenance=_provenance(event),
            actor=_uploader(event),
            description=event.description,
            evaluation=ctx.get("evaluation"),
        )
        ingest.set_status(session, event.event_id, ingest.State.DONE, adapter_id=row.id)
        status = row.status
    log.info("adapter_registered", adapter_id=row.id, status=status, created=created)
    return {"event": ctx["event"], "adapter_id": row.id, "status": status, "created": created}


@app.task(base=PipelineTask, bind=True, name=f"{TASK_MODULE}.broadcast")
def broadcast(self: Task, ctx: dict[str, Any]) -> int:
    """Publish the outbox now, so the ``fleet.refresh`` goes out without waiting for beat."""
    rt = get_runtime()
    return relay_outbox(rt.session, rt.redis, batch=rt.settings.relay_batch)


@app.task(base=PipelineTask, bind=True, name=f"{TASK_MODULE}.relay")
def relay(self: Task) -> int:
    """The periodic outbox relay (beat)."""
    rt = get_runtime()
    return relay_outbox(rt.session, rt.redis, batch=rt.settings.relay_batch)


@app.task(base=PipelineTask, bind=True, name=f"{TASK_MODULE}.fold_usage")
def fold_usage(self: Task) -> int:
    """Fold the engines' usage flushes into hourly buckets (beat; idempotent per flush)."""
    from workers.usage import fold_usage as fold

    rt = get_runtime()
    return fold(rt.session, rt.redis)


@app.task(base=PipelineTask, bind=True, name=f"{TASK_MODULE}.reclaim_stuck")
def reclaim_stuck(self: Task) -> dict[str, int]:
    """Re-drive ingest records that stopped progressing and fail versions stuck mid-way."""
    return sweeps.reclaim_stuck(get_runtime(), app)


@app.task(base=PipelineTask, bind=True, name=f"{TASK_MODULE}.blob_gc")
def blob_gc(self: Task) -> int:
    """Delete unreferenced blobs older than the grace period."""
    rt = get_runtime()
    with rt.session() as session:
        removed = run_blob_gc(session, rt.blobs, timedelta(seconds=rt.store.blob_gc_grace_seconds))
    return len(removed)


@signals.worker_init.connect(weak=False)
def _import_formats(**_: Any) -> None:
    """Import the adapter formats (torch) in the worker's main process before it forks its
    pool, so no pool process pays that import (seconds) inside its first ingest."""
    import store.formats.canonical
    import store.formats.detect  # noqa: F401


@signals.worker_init.connect(weak=False)
def _freeze_startup_heap(**_: Any) -> None:
    """After the imports above and before the pool forks: the pool processes inherit a
    frozen start-up heap, so no full collection of it stalls an ingest (``store.heap``)."""
    freeze_startup_heap("worker")


@signals.worker_process_init.connect(weak=False)
def _one_torch_thread(**_: Any) -> None:
    """Each pool process runs torch on one thread. An ingest's tensor work (the finite
    check, the fp32 conversion) is small, and N pool processes each starting a pool of as
    many OpenMP threads as there are cores oversubscribe the host: two forked processes
    parsing an 81 MB adapter at once took 0.75 s each for their first parse with 2 threads
    each, 0.18 s with one (2 cores; later parses ~0.12 s either way). An evaluation task
    sets its own count (``LORAFLEET_EVAL_THREADS``)."""
    import torch

    torch.set_num_threads(1)
    log.info("worker_process_ready", torch_threads=torch.get_num_threads())


@signals.worker_process_init.connect(weak=False)
def _connect(**_: Any) -> None:
    """Open this pool process's database and Redis connections before its first task. A
    store that is down now is not fatal: the first task connects (and retries) itself."""
    rt = get_runtime()
    try:
        with rt.engine.connect():
            pass
        rt.redis.ping()
        rt.blobs  # noqa: B018 - built once, here, instead of inside the first task
    except Exception as exc:  # noqa: BLE001 - a pool process must start regardless
        log.warning("worker_connect_deferred", error=str(exc)[:500])
