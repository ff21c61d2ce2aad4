"""The evaluation gate (issue 17) through the real pipeline: announcement → bridge → ingest
worker → ``evaluate`` on its own queue in a second, real Celery worker process holding a
tiny base model → register (gated) → ``fleet.refresh``; eval sets and policies set through
the live registry API over the same database and blob store.

The adapters are real, short LoRA fine-tunes (``lorafleet.train``, transformers + peft):
``math`` learns the eval set's answers; ``shuffled`` learns the same prompts with their
answers rotated (a deliberately broken adapter).
"""

from __future__ import annotations

import json
import math
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pipeline_harness import Pipeline
from support.live_api import LiveRegistry, serve_registry
from support.processes import CELERY_APP, REPO, Proc, process_env, wait_for

from events import streams
from events.publisher import announce_job_completed
from store.models import AdapterVersion, Evaluation, StatusTransition

EVAL_BASE = "tiny-eval"
MATH = [json.loads(line) for line in (REPO / "examples" / "math.jsonl").read_text().splitlines()]
GATE = {"max_loss_ratio": 0.9, "min_exact_match": 0.5, "max_regression": 0.02}


def eval_worker_argv(name: str) -> list[str]:
    """A Celery worker consuming only the eval queue, as ``lorafleet worker -Q evaluate``."""
    return [
        sys.executable, "-m", "celery", "-A", CELERY_APP, "worker", "-Q", streams.EVAL_QUEUE,
        "--concurrency=1", "--pool=prefork", "-n", f"{name}@%h", "--without-gossip",
        "--without-mingle", "-l", "INFO",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def eval_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.tiny import init_tiny

    return init_tiny(tmp_path_factory.mktemp("eval-model") / EVAL_BASE, std=0.2, seed=7)


@pytest.fixture(scope="module")
def trained(eval_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``math`` (trained on the eval rows) and ``shuffled`` (answers rotated)."""
    from lorafleet.train import Example, TrainConfig, train_lora

    root = tmp_path_factory.mktemp("trained")
    rows = [Example(r["prompt"], r["completion"]) for r in MATH]
    answers = [r.answer for r in rows]
    shuffled = [Example(r.prompt, answers[(i + 1) % len(rows)]) for i, r in enumerate(rows)]
    out = {}
    for name, examples in (("math", rows), ("shuffled", shuffled)):
        train_lora(eval_model, examples, root / name, TrainConfig(steps=60, seed=1))
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def api(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRegistry]:
    root = tmp_path_factory.mktemp("eval-api")
    with serve_registry(
        pipeline.db_url, root, engine=pipeline.engine, blob_url=f"file://{pipeline.blob_dir}"
    ) as live:
        yield live


def _eval_env(pipeline: Pipeline, eval_model: Path, home: Path, **extra: str) -> dict[str, str]:
    return process_env(
        {
            "LORAFLEET_DATABASE_URL": pipeline.db_url,
            "LORAFLEET_REDIS_URL": pipeline.redis_url,
            "LORAFLEET_BLOB_URL": f"file://{pipeline.blob_dir}",
            "LORAFLEET_HOME": str(home),
            "LORAFLEET_TASK_MAX_RETRIES": "2",
            "LORAFLEET_TASK_RETRY_BACKOFF_MAX": "1",
            "LORAFLEET_LOG_FORMAT": "json",
            "LORAFLEET_EVAL_MODELS": f"{EVAL_BASE}={eval_model}",
            "LORAFLEET_BROKER_VISIBILITY_TIMEOUT": "30",
            "OMP_NUM_THREADS": "1",
            **extra,
        }
    )


@pytest.fixture(scope="module")
def eval_worker(
    pipeline: Pipeline, eval_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    root = tmp_path_factory.mktemp("eval-worker")
    env = _eval_env(pipeline, eval_model, root)
    worker = Proc("eval-worker", eval_worker_argv(f"evaltest-{uuid.uuid4().hex[:6]}"), env, root)
    worker.start(b" ready.", timeout=90)
    try:
        yield worker
    finally:
        worker.stop(timeout=20)


@pytest.fixture(scope="module")
def gated(api: LiveRegistry, eval_model: Path, eval_worker: Proc) -> LiveRegistry:
    """Namespaces ``evalauto`` (auto) and ``evalmanual`` (manual), each with the math eval
    set and a gate; ``evalfree`` (auto) without a policy; the eval base model."""
    config = json.loads((eval_model / "config.json").read_text())
    api.admin.register_base_model(EVAL_BASE, config)
    content = "".join(json.dumps(r) + "\n" for r in MATH)
    for ns, policy in (("evalauto", "auto"), ("evalmanual", "manual"), ("evalfree", "auto")):
        api.admin.create_namespace(ns, approval_policy=policy)
        if ns == "evalfree":
            continue
        api.admin.request(
            "POST", f"/v1/namespaces/{ns}/eval-sets", json={"name": "math", "content": content}
        )
        api.admin.request(
            "PUT",
            f"/v1/namespaces/{ns}/eval-policy",
            json={"eval_set": "math", "metrics": ["loss", "exact_match"], "gate": GATE},
        )
    return api


def _announce(pipeline: Pipeline, coordinates: str, directory: Path, base: str = EVAL_BASE) -> Any:
    return announce_job_completed(
        pipeline.redis_url,
        job_id=f"job-{uuid.uuid4().hex[:8]}",
        namespace=coordinates.split("/")[0],
        output_model=coordinates,
        base_model=base,
        output_dir=directory,
    )


def _copy(pipeline: Pipeline, source: Path) -> Path:
    """The trained adapter as a trainer's artifact under the allowed root."""
    import shutil

    dest = pipeline.artifacts / uuid.uuid4().hex
    shutil.copytree(source, dest)
    return dest


def _ingest(pipeline: Pipeline, coordinates: str, source: Path, timeout: float = 180) -> Any:
    record = pipeline.wait_ingest(
        _announce(pipeline, coordinates, _copy(pipeline, source)).event_id, timeout
    )
    assert record.status == "done", (record.error_code, record.error_message)
    return record


def _version(pipeline: Pipeline, adapter_id: str) -> AdapterVersion:
    with pipeline.session() as s:
        row = s.get(AdapterVersion, adapter_id)
        assert row is not None
        return row


def _evaluation(api: LiveRegistry, adapter_id: str) -> dict[str, Any]:
    return api.admin.request("GET", f"/v1/adapters/{adapter_id}/evaluation")


def test_passing_version_becomes_ready_with_its_scores(
    pipeline: Pipeline, gated: LiveRegistry, trained: dict[str, Path]
) -> None:
    record = _ingest(pipeline, "evalauto/math@1.0.0", trained["math"])
    version = _version(pipeline, record.adapter_id)
    assert version.status == "ready", (version.status_code, version.status_reason)
    assert version.status_reason.startswith("evaluation passed")
    body = _evaluation(gated, record.adapter_id)
    assert body["passed"] is True
    cand, base = body["scores"]["candidate"], body["scores"]["base"]
    assert cand["exact_match"] == 1.0 and base["exact_match"] == 0.0
    assert cand["loss"] <= 0.9 * base["loss"]
    assert math.isclose(cand["perplexity"], math.exp(cand["loss"]))
    assert body["comparison"] is None and body["scores"]["comparison"] is None
    assert {c["rule"]: c["passed"] for c in body["checks"]} == {
        "max_loss_ratio": True,
        "min_exact_match": True,
        "max_regression": None,  # a first version has nothing to compare with
    }
    eval_set = gated.admin.request("GET", "/v1/namespaces/evalauto/eval-sets/math")
    assert body["eval_set"] == {"id": eval_set["id"], "name": "math", "sha256": eval_set["sha256"]}
    assert (
        body["engine_build"].startswith("lorafleet ")
        and " cpu torch.float32 " in body["engine_build"]
    )
    assert pipeline.wait_for(lambda: pipeline.refresh_entries(record.adapter_id), 30)


def test_failing_version_stays_pending_with_evaluation_failed_and_its_scores(
    pipeline: Pipeline, gated: LiveRegistry, trained: dict[str, Path]
) -> None:
    record = _ingest(pipeline, "evalauto/shuffled@1.0.0", trained["shuffled"])
    version = _version(pipeline, record.adapter_id)
    assert (version.status, version.status_code) == ("pending", "evaluation_failed")
    assert "exact match 0.000 >= 0.5" in version.status_reason
    body = _evaluation(gated, record.adapter_id)
    assert body["passed"] is False
    assert body["scores"]["candidate"]["exact_match"] == 0.0
    failed = [c["rule"] for c in body["checks"] if c["passed"] is False]
    assert "min_exact_match" in failed
    pipeline.run_task("workers.tasks.relay")
    assert pipeline.refresh_entries(record.adapter_id) == []  # never loaded anywhere


def test_next_version_is_compared_with_the_latest_ready_one_deterministically(
    pipeline: Pipeline, gated: LiveRegistry, trained: dict[str, Path]
) -> None:
    first = _ingest(pipeline, "evalauto/math2@1.0.0", trained["math"])
    second = _ingest(pipeline, "evalauto/math2@1.1.0", trained["math"])
    one, two = _evaluation(gated, first.adapter_id), _evaluation(gated, second.adapter_id)
    assert two["comparison"] == {
        "adapter_id": first.adapter_id,
        "coordinates": "evalauto/math2@1.0.0",
        "chosen_by": "latest",
    }
    # The same bytes and rows give the same scores, in another run and in another arm.
    assert two["scores"]["candidate"] == one["scores"]["candidate"]
    assert two["scores"]["comparison"] == one["scores"]["candidate"]
    assert two["scores"]["base"] == one["scores"]["base"]
    assert {c["rule"]: c["passed"] for c in two["checks"]}["max_regression.loss"] is True
    assert _version(pipeline, second.adapter_id).status == "ready"


def test_manual_namespace_waits_for_the_reviewer_with_the_scores(
    pipeline: Pipeline, gated: LiveRegistry, trained: dict[str, Path]
) -> None:
    record = _ingest(pipeline, "evalmanual/math@1.0.0", trained["math"])
    version = _version(pipeline, record.adapter_id)
    assert (version.status, version.status_code) == ("pending", None)
    assert version.status_reason.startswith("evaluation passed, awaiting review")
    assert _evaluation(gated, record.adapter_id)["scores"]["candidate"]["exact_match"] == 1.0


def test_namespace_without_a_policy_is_not_evaluated(
    pipeline: Pipeline, gated: LiveRegistry, trained: dict[str, Path]
) -> None:
    record = _ingest(pipeline, "evalfree/shuffled@1.0.0", trained["shuffled"])
    assert _version(pipeline, record.adapter_id).status == "ready"
    with pipeline.session() as s:
        assert (
            s.execute(sa.select(Evaluation).filter_by(adapter_id=record.adapter_id)).first() is None
        )


def test_scores_agree_with_transformers_and_peft(
    pipeline: Pipeline, gated: LiveRegistry, trained: dict[str, Path], eval_model: Path
) -> None:
    """Loss within 1e-4 and exact match equal, computed independently from the adapter files
    and the eval rows with ``transformers.LlamaForCausalLM`` + ``peft.PeftModel``."""
    from support.hf_reference import hf_scores

    record = _ingest(pipeline, "evalauto/math-ref@1.0.0", trained["math"])
    body = _evaluation(gated, record.adapter_id)
    for arm, adapter in (("candidate", trained["math"]), ("base", None)):
        loss, exact = hf_scores(eval_model, adapter, MATH)
        assert abs(body["scores"][arm]["loss"] - loss) < 1e-4, (arm, body["scores"][arm], loss)
        assert body["scores"][arm]["exact_match"] == exact, arm
    shuffled = _ingest(pipeline, "evalauto/shuffled-ref@1.0.0", trained["shuffled"])
    loss, exact = hf_scores(eval_model, trained["shuffled"], MATH)
    scores = _evaluation(gated, shuffled.adapter_id)["scores"]["candidate"]
    assert abs(scores["loss"] - loss) < 1e-4 and scores["exact_match"] == exact


def test_evaluation_that_cannot_run_is_retried_then_a_recorded_failure(
    pipeline: Pipeline, gated: LiveRegistry, tmp_path: Path
) -> None:
    """The gated namespace's version on a base model no eval worker holds: retried (the
    worker log shows it), then ``failed`` with ``evaluation_unavailable``, never ready."""
    from support.factories import random_adapter, write_hf_peft
    from support.tiny import tiny_spec

    directory = pipeline.artifacts / uuid.uuid4().hex
    write_hf_peft(random_adapter(tiny_spec(), seed=3), directory)
    event = _announce(pipeline, "evalauto/elsewhere@1.0.0", directory, base="tiny-llama")
    record = pipeline.wait_ingest(event.event_id, 120)
    assert (record.status, record.error_code) == ("failed", "evaluation_unavailable")
    version = _version(pipeline, record.adapter_id)
    assert (version.status, version.status_code) == ("failed", "evaluation_unavailable")
    assert "holds no model for base model 'tiny-llama'" in version.status_reason
    with pipeline.session() as s:
        steps = s.execute(
            sa.select(StatusTransition.to_status).filter_by(adapter_id=record.adapter_id)
        ).scalars()
        assert "ready" not in list(steps)


def test_killed_eval_worker_is_retried_without_a_double_result(
    pipeline: Pipeline,
    gated: LiveRegistry,
    trained: dict[str, Path],
    eval_worker: Proc,
    eval_model: Path,
    tmp_path: Path,
) -> None:
    """SIGKILL the eval worker (pool included) while it scores a version: a new worker takes
    the unacknowledged message again (visibility timeout), scores it, and the version has one
    evaluation, one move to ready and one load refresh."""
    rows = "".join(json.dumps(MATH[i % len(MATH)]) + "\n" for i in range(60))
    gated.admin.create_namespace("evalkill", approval_policy="auto")
    gated.admin.request(
        "POST", "/v1/namespaces/evalkill/eval-sets", json={"name": "long", "content": rows}
    )
    gated.admin.request(
        "PUT",
        "/v1/namespaces/evalkill/eval-policy",
        json={"eval_set": "long", "metrics": ["loss", "exact_match"], "gate": GATE},
    )
    started_marker = b"evaluation_started"
    before = eval_worker.log_path.read_bytes().count(started_marker)
    event = _announce(pipeline, "evalkill/math@1.0.0", _copy(pipeline, trained["math"]))
    try:
        wait_for(
            lambda: eval_worker.log_path.read_bytes().count(started_marker) > before, 120, "scoring"
        )
    except AssertionError:
        raise AssertionError(eval_worker.tail()) from None
    eval_worker.kill9()
    with pipeline.session() as s:  # killed mid-way: nothing registered yet
        assert s.execute(sa.select(AdapterVersion).filter_by(namespace="evalkill")).first() is None
    eval_worker.start(b" ready.", timeout=90)
    record = pipeline.wait_ingest(event.event_id, 240)
    assert record.status == "done", (record.error_code, record.error_message)
    assert eval_worker.log_path.read_bytes().count(started_marker) >= before + 2  # scored again
    with pipeline.session() as s:
        evaluations = s.execute(
            sa.select(Evaluation).filter_by(adapter_id=record.adapter_id)
        ).scalars()
        assert len(list(evaluations)) == 1
        readies = s.execute(
            sa.select(StatusTransition).filter_by(adapter_id=record.adapter_id, to_status="ready")
        ).scalars()
        assert len(list(readies)) == 1
    assert _version(pipeline, record.adapter_id).status == "ready"
    pipeline.wait_for(lambda: pipeline.refresh_entries(record.adapter_id), 30)
    pipeline.run_task("workers.tasks.relay")
    assert len(pipeline.refresh_entries(record.adapter_id)) == 1


def test_policy_comparing_with_an_alias_uses_its_target(
    pipeline: Pipeline, gated: LiveRegistry, trained: dict[str, Path]
) -> None:
    """``compare_to: @stable`` compares with the version behind the alias (issue 13's
    resolution), not the latest ready one; before the alias exists, with the latest."""
    api = gated.admin
    api.create_namespace("evalalias", approval_policy="auto")
    content = "".join(json.dumps(r) + "\n" for r in MATH)
    api.request(
        "POST", "/v1/namespaces/evalalias/eval-sets", json={"name": "m", "content": content}
    )
    gate = {**GATE, "compare_to": "@stable"}
    api.request(
        "PUT",
        "/v1/namespaces/evalalias/eval-policy",
        json={"eval_set": "m", "metrics": ["loss", "exact_match"], "gate": gate},
    )
    first = _ingest(pipeline, "evalalias/math@1.0.0", trained["math"])
    second = _ingest(pipeline, "evalalias/math@1.1.0", trained["math"])
    assert _evaluation(gated, second.adapter_id)["comparison"]["chosen_by"] == (
        "latest (@stable not set)"
    )
    api.request(
        "PUT",
        "/v1/adapters/evalalias/math/aliases/stable",
        json={"targets": [{"version": "1.0.0", "weight": 100}]},
    )
    third = _ingest(pipeline, "evalalias/math@1.2.0", trained["math"])
    comparison = _evaluation(gated, third.adapter_id)["comparison"]
    assert comparison == {
        "adapter_id": first.adapter_id,
        "coordinates": "evalalias/math@1.0.0",
        "chosen_by": "@stable",
    }
