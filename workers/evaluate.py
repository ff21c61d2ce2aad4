"""The ``evaluate`` step of the ingest chain (issue 17): score a validated adapter, the base
model and the version it would replace on the namespace's evaluation set, in the same
batches, with the engine's model and multi-LoRA code (``engine.evaluation``).

The step runs on its own queue (``events.streams.EVAL_QUEUE``), consumed by workers that
hold base models (``LORAFLEET_EVAL_MODELS``): ``lorafleet worker -Q evaluate``. It is only
in a chain whose namespace has an evaluation policy: ``validate`` hands over to it
(``route_to_evaluation``, a Celery ``replace`` that keeps the rest of the chain), so a
namespace without a policy needs no evaluation worker and nothing changes for it.

Faults: an evaluation that cannot run (no model for the base model here, a blob or the eval
set missing) is ``EvaluationUnavailable``, a transient fault retried with back-off like any
other; once retries are exhausted the version is recorded ``failed`` with code
``evaluation_unavailable``. Never a pass. A worker killed mid-evaluation leaves its message
unacknowledged (``acks_late``): it is delivered again and scored again, and the version is
written once (``register`` is idempotent, one ``evaluations`` row per version).
"""

from __future__ import annotations

import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from celery import Task, chain
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from events.models import JobCompleted
from store import catalog
from store.eval_sets import get_eval_set, read_rows
from store.evaluation import (
    UNAVAILABLE_CODE,
    EvaluationUnavailable,
    Policy,
    comparison_version,
    get_policy,
    judge,
    passed,
)
from store.models import AdapterFile, AdapterVersion
from workers.celery_app import TASK_MODULE, app
from workers.runtime import get_runtime
from workers.tasks import IngestTask, package_from_dict, record_pipeline_failure

if TYPE_CHECKING:
    from engine.model import ModelArgs, Transformer
    from engine.tokenizer import Tokenizer
    from store.formats import BaseModelSpec, CanonicalAdapter

log = structlog.get_logger(__name__)

EVAL_TASK = "workers.evaluate.evaluate"


class EvalSettings(BaseSettings):
    """What an evaluation worker holds (``LORAFLEET_EVAL_*``)."""

    model_config = SettingsConfigDict(env_prefix="LORAFLEET_EVAL_", extra="ignore")

    models: str = Field(
        default="",
        description="Base models this worker scores on: name=HF model directory, separated "
        "by ','. A base model not listed is an evaluation this worker cannot run.",
    )
    device: str = Field(default="cpu", description="torch device of the models (cpu, cuda).")
    batch_rows: int = Field(default=8, ge=1, description="Eval rows per batch (x arms).")
    threads: int = Field(
        default=1,
        ge=1,
        description="torch CPU threads; 1 keeps a shared host responsive (more threads than "
        "free cores makes torch's thread pool spin, measured 15x slower on a loaded host).",
    )

    def model_dirs(self) -> dict[str, Path]:
        out = {}
        for item in filter(None, (p.strip() for p in self.models.split(","))):
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"LORAFLEET_EVAL_MODELS item {item!r} is not name=directory")
            out[name.strip()] = Path(path.strip())
        return out


@lru_cache(maxsize=1)
def get_eval_settings() -> EvalSettings:
    return EvalSettings()


@lru_cache(maxsize=4)
def _base_model(name: str) -> tuple[Transformer, ModelArgs, Tokenizer, BaseModelSpec]:
    """The base model ``name`` loaded once per worker process."""
    import torch

    from engine.checkpoint import load_model, read_model_config
    from engine.tokenizer import Tokenizer

    settings = get_eval_settings()
    directory = settings.model_dirs().get(name)
    if directory is None or not (directory / "config.json").exists():
        raise EvaluationUnavailable(
            f"this worker holds no model for base model {name!r} (LORAFLEET_EVAL_MODELS)"
        )
    torch.set_num_threads(settings.threads)
    torch.manual_seed(0)
    spec, args = read_model_config(directory)
    model, args = load_model(directory, settings.device, torch.float32, args=args)
    return model, args, Tokenizer(directory), spec


def _download(files: list[tuple[str, str, str]], dest: Path) -> Path:
    """Fetch ``(path, blob_key, sha256)`` files into ``dest`` (digest-checked)."""
    blobs = get_runtime().blobs
    dest.mkdir(parents=True)
    for path, key, sha256 in files:
        if not blobs.exists(key):
            raise EvaluationUnavailable(f"blob {key} of {path} is not stored")
        blobs.download(key, dest / path, sha256)
    return dest


def _load(
    files: list[tuple[str, str, str]], spec: BaseModelSpec, tmp: Path, name: str
) -> CanonicalAdapter:
    from store.formats import load_adapter

    return load_adapter(_download(files, tmp / name), spec, get_runtime().limits)


def _comparison_files(session: Any, version: AdapterVersion) -> list[tuple[str, str, str]]:
    rows = session.execute(
        sa.select(AdapterFile).where(
            AdapterFile.adapter_id == version.id, AdapterFile.role == "canonical"
        )
    ).scalars()
    return [(f.path, f.blob_key, f.sha256) for f in rows]


def _plan(event: JobCompleted) -> dict[str, Any] | None:
    """What to score, read in one transaction: None when the namespace has no policy."""
    namespace, name, version = event.coordinates()
    rt = get_runtime()
    with rt.session() as session:
        row = get_policy(session, namespace)
        if row is None:
            return None
        policy = Policy.of(row)
        try:
            eval_set = get_eval_set(session, namespace, policy.eval_set)
        except Exception as exc:  # the set is gone: cannot run, never a pass
            raise EvaluationUnavailable(f"eval set {policy.eval_set!r} is missing") from exc
        comparison, chosen_by = comparison_version(
            session, namespace, name, event.base_model, policy.compare_to, exclude=version
        )
        return {
            "policy": policy,
            "eval_set": eval_set,
            "comparison": comparison,
            "chosen_by": chosen_by,
            "comparison_files": _comparison_files(session, comparison) if comparison else [],
        }


def evaluate_package(event: JobCompleted, pkg_files: list[tuple[str, str, str]]) -> dict | None:
    """Score the candidate (``pkg_files``: its canonical files), the base model and the
    comparison version; the evaluation record ``register`` stores, or None (no policy)."""
    from engine.evaluation import encode_rows, engine_build, score

    plan = _plan(event)
    if plan is None:
        return None
    policy, eval_set, comparison = plan["policy"], plan["eval_set"], plan["comparison"]
    settings = get_eval_settings()
    model, args, tokenizer, spec = _base_model(event.base_model)
    try:
        rows = read_rows(get_runtime().blobs, eval_set)
    except Exception as exc:
        raise EvaluationUnavailable(f"eval set {eval_set.name!r} cannot be read: {exc}") from exc
    started = time.perf_counter()
    log.info("evaluation_started", rows=len(rows), comparison=comparison and comparison.coordinates)
    with tempfile.TemporaryDirectory(prefix="lorafleet-eval-") as tmp:
        arms: dict[str, Any] = {
            "candidate": _load(pkg_files, spec, Path(tmp), "candidate"),
            "base": None,
        }
        if comparison is not None:
            arms["comparison"] = _load(plan["comparison_files"], spec, Path(tmp), "comparison")
    encoded = encode_rows(tokenizer, args, rows)
    scores: dict[str, Any] = score(
        model,
        args,
        tokenizer,
        encoded,
        arms,
        metrics=policy.metrics,
        batch_rows=settings.batch_rows,
    )
    scores.setdefault("comparison", None)
    checks = judge(policy, scores)
    seconds = time.perf_counter() - started
    result = {
        "eval_set": {"id": eval_set.id, "name": eval_set.name, "sha256": eval_set.sha256},
        "comparison": None
        if comparison is None
        else {
            "adapter_id": comparison.id,
            "coordinates": comparison.coordinates,
            "chosen_by": plan["chosen_by"],
        },
        "scores": scores,
        "checks": checks,
        "passed": passed(checks),
        "policy": policy.to_dict(),
        "engine_build": engine_build(settings.device, model.output.weight.dtype),
        "seconds": round(seconds, 4),
    }
    log.info("evaluation_done", passed=result["passed"], seconds=round(seconds, 3))
    return result


class EvaluateTask(IngestTask):
    """An evaluation that failed for good (retries exhausted, or a fault of another kind) is
    a ``failed`` version with code ``evaluation_unavailable``: recorded, never a pass."""

    def _record(self, event: JobCompleted, exc: Exception, exc_type: type) -> None:
        message = f"evaluation could not run: {exc_type.__name__}: {exc}"[:4000]
        try:
            record_pipeline_failure(event, UNAVAILABLE_CODE, message, version_failed=True)
        except Exception as record_exc:  # noqa: BLE001 - the reclaim sweep re-drives it later
            log.error("evaluation_failure_not_recorded", error=str(record_exc))
            return
        log.warning("evaluation_unavailable", event_id=event.event_id, message=message[:500])


@app.task(base=EvaluateTask, bind=True, name=EVAL_TASK)
def evaluate(self: Task, ctx: dict[str, Any]) -> dict[str, Any]:
    """Score the packaged adapter; the result travels to ``register`` in ``ctx``."""
    event = JobCompleted.model_validate(ctx["event"])
    pkg = package_from_dict(ctx["package"])
    from workers import ingest

    with get_runtime().session() as session:
        ingest.touch(session, event.event_id)
        catalog.get_base_model_spec(session, event.base_model)
    files = [(f.path, f.blob_key, f.sha256) for f in pkg.files if f.role == "canonical"]
    evaluation = evaluate_package(event, files)
    return {**ctx, "evaluation": evaluation}


def route_to_evaluation(task: Task, ctx: dict[str, Any]) -> dict[str, Any]:
    """Called by ``validate`` last: ``ctx`` unchanged when the namespace has no evaluation
    policy; otherwise the work continues with ``evaluate`` (on the eval queue), then
    ``register`` and ``broadcast``: those of a chain's remaining steps (``Task.replace`` keeps
    them), or new ones after the one-task ``ingest``."""
    event = JobCompleted.model_validate(ctx["event"])
    with get_runtime().session() as session:
        has_policy = get_policy(session, event.namespace) is not None
    if not has_policy:
        return ctx
    step: Any = app.signature(EVAL_TASK, args=(ctx,))
    if not task.request.chain:  # the one-task ingest: register and relay follow evaluate
        step = chain(step, app.signature(f"{TASK_MODULE}.register"))
        step |= app.signature(f"{TASK_MODULE}.broadcast")
    raise task.replace(step)
