"""Every announced event ends visible (issue 9, item 6): an event the chain refuses ends as
a ``failed`` ingest record with its code, readable through ``GET /v1/ingest/{event_id}``,
``GET /v1/ingest?job_id=...`` and ``lorafleet events status``, under the registry's
tenancy rules. Real bridge, real Celery worker subprocess, real registry API over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pipeline_harness import BASE_MODEL, Pipeline
from support.factories import random_adapter, write_hf_peft
from support.processes import REPO
from support.tiny import tiny_spec
from typer.testing import CliRunner

from events.dlq import list_dead_letters
from events.models import JobCompleted
from events.publisher import announce_job_completed
from store import tenancy
from store.client import RegistryClient
from store.models import AdapterVersion


@dataclass
class Api:
    base_url: str
    admin_token: str

    def get(self, path: str, token: str | None = None, **params: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        return httpx.get(f"{self.base_url}{path}", headers=headers, params=params, timeout=30)


@pytest.fixture(scope="module")
def api(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The registry API over the pipeline's database, with the namespaces these tests use."""
    from store.api.server import run_registry_api
    from store.settings import StoreSettings

    settings = StoreSettings(
        home=tmp_path_factory.mktemp("api-home"),
        database_url=pipeline.db_url,
        blob_url=f"file://{pipeline.blob_dir}",
    )
    with pipeline.session() as s:
        tenancy.create_namespace(s, "tight", approval_policy="auto", max_versions=0, actor="test")
    with run_registry_api(settings) as (base_url, token):
        yield Api(base_url, token)


def _adapter_dir(pipeline: Pipeline, seed: int, **spec: int) -> Path:
    directory = pipeline.artifacts / uuid.uuid4().hex
    write_hf_peft(random_adapter(tiny_spec(**spec), seed=seed), directory)
    return directory


def _announce(pipeline: Pipeline, coordinates: str, directory: Path, **kw: str) -> JobCompleted:
    return announce_job_completed(
        pipeline.redis_url,
        job_id=f"job-{uuid.uuid4().hex[:8]}",
        namespace=coordinates.split("/")[0],
        output_model=coordinates,
        base_model=kw.get("base_model", BASE_MODEL),
        output_dir=directory,
    )


def _cli(api: Api, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """``lorafleet events status ...`` as a user runs it: a separate process."""
    env = {
        **os.environ,
        "LORAFLEET_API_URL": api.base_url,
        "LORAFLEET_TOKEN": token or api.admin_token,
        "PYTHONPATH": str(REPO),
        "COLUMNS": "200",
    }
    command = [sys.executable, "-c", "from lorafleet.cli import app; app()", "events", "status"]
    return subprocess.run(
        [*command, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_event_into_missing_namespace_ends_failed_and_visible(pipeline: Pipeline, api: Api) -> None:
    event = _announce(pipeline, "ghost/support-bot@1.0.0", _adapter_dir(pipeline, seed=1))
    pipeline.wait_ingest(event.event_id)

    body = api.get(f"/v1/ingest/{event.event_id}").json()
    assert (body["status"], body["error"]["code"]) == ("failed", "namespace_not_found")
    assert "ghost" in body["error"]["message"]
    assert (body["job_id"], body["namespace"], body["output_model"]) == (
        event.job_id,
        "ghost",
        "ghost/support-bot@1.0.0",
    )
    (by_job,) = api.get("/v1/ingest", job_id=event.job_id).json()["data"]
    assert by_job == body
    # Neither an adapter nor a dead letter: the ingest record is where it ends.
    with pipeline.session() as s:
        assert not s.query(AdapterVersion).filter_by(namespace="ghost").all()
    assert not [d for d in list_dead_letters(pipeline.redis) if event.event_id in str(d.fields)]

    for ref in (event.event_id, event.job_id):
        result = _cli(api, ref)
        assert result.returncode == 3, result.stderr
        assert "failed" in result.stdout and event.event_id in result.stdout
        assert "namespace_not_found" in result.stdout and "'ghost'" in result.stdout


def test_every_final_error_ends_as_a_failed_record_with_its_code(
    pipeline: Pipeline, api: Api
) -> None:
    first = _announce(pipeline, "acme/fixed@1.0.0", _adapter_dir(pipeline, seed=2))
    assert pipeline.wait_ingest(first.event_id).status == "done"
    cases = {
        "unknown_base_model": _announce(
            pipeline, "acme/nobase@1.0.0", _adapter_dir(pipeline, seed=3), base_model="nope"
        ),
        "shape_mismatch": _announce(
            pipeline, "acme/shape@1.0.0", _adapter_dir(pipeline, seed=4, hidden_size=32)
        ),
        "quota_exceeded": _announce(pipeline, "tight/bot@1.0.0", _adapter_dir(pipeline, seed=5)),
        # Same coordinates, other bytes: versions are immutable.
        "version_conflict": _announce(pipeline, "acme/fixed@1.0.0", _adapter_dir(pipeline, 6)),
    }
    for code, event in cases.items():
        pipeline.wait_ingest(event.event_id)
        body = api.get(f"/v1/ingest/{event.event_id}").json()
        assert (body["status"], body["error"]["code"]) == ("failed", code), body
        assert body["error"]["message"]


def test_done_event_reports_its_adapter_and_exits_zero(pipeline: Pipeline, api: Api) -> None:
    event = _announce(pipeline, "acme/fine@1.0.0", _adapter_dir(pipeline, seed=7))
    record = pipeline.wait_ingest(event.event_id)
    body = api.get(f"/v1/ingest/{event.event_id}").json()
    assert (body["status"], body["adapter_id"], body["error"]) == ("done", record.adapter_id, None)
    from lorafleet.cli import app

    env = {"LORAFLEET_API_URL": api.base_url, "LORAFLEET_TOKEN": api.admin_token}
    result = CliRunner().invoke(app, ["events", "status", event.job_id, "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert record.adapter_id in result.stdout


def test_ingest_records_follow_tenancy(pipeline: Pipeline, api: Api) -> None:
    gated = _announce(pipeline, "gated/private@1.0.0", _adapter_dir(pipeline, seed=8))
    own = _announce(pipeline, "acme/mine@1.0.0", _adapter_dir(pipeline, seed=9))
    for event in (gated, own):
        pipeline.wait_ingest(event.event_id)
    with RegistryClient(api.base_url, api.admin_token) as admin:
        reader = admin.create_token("reader", "acme", "acme-reader")

    assert api.get(f"/v1/ingest/{own.event_id}", reader).json()["status"] == "done"
    hidden = api.get(f"/v1/ingest/{gated.event_id}", reader)
    missing = api.get("/v1/ingest/no-such-event", reader)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
    assert api.get("/v1/ingest", reader, job_id=gated.job_id).json()["data"] == []
    result = _cli(api, gated.job_id, token=reader)
    assert result.returncode == 1 and "not_found" in result.stderr


def test_bad_lookups_are_typed_errors(api: Api) -> None:
    no_job = api.get("/v1/ingest")
    assert no_job.status_code == 400 and no_job.json()["error"]["code"] == "bad_request"
    too_long = api.get("/v1/ingest/" + "x" * 200)
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "bad_request"
    unauthenticated = httpx.get(f"{api.base_url}/v1/ingest/anything", timeout=10)
    assert unauthenticated.status_code == 401


def test_a_failing_rerun_never_undoes_a_done_record(pipeline: Pipeline, api: Api) -> None:
    import shutil

    from workers.celery_app import ingest_chain

    directory = _adapter_dir(pipeline, seed=10)
    event = _announce(pipeline, "acme/rerun@1.0.0", directory)
    record = pipeline.wait_ingest(event.event_id)
    assert record.status == "done"
    # The sweep re-drove it while it was slow; meanwhile the trainer cleaned up its output.
    shutil.rmtree(directory)
    # The ingest task of a finished event returns what was registered, without the files.
    copy = ingest_chain(pipeline.celery, event).apply_async().get(timeout=60)
    assert (copy["adapter_id"], copy["created"]) == (record.adapter_id, False)
    # A step of an older release's chain, still queued, needs them and fails.
    ctx = {"event": event.model_dump(mode="json")}
    result = pipeline.celery.signature("workers.tasks.package", args=(ctx,)).apply_async()
    result.get(timeout=60, propagate=False)
    assert result.failed()
    # Its failure handler has run (and said so) once this line is logged.
    pipeline.wait_for(lambda: "ingest_rerun_failed_after_done" in pipeline.worker_log.read_text())
    with pipeline.session() as s:
        from store.models import IngestRecord

        assert s.get(IngestRecord, event.event_id).status == "done"
    body = api.get(f"/v1/ingest/{event.event_id}").json()
    assert (body["status"], body["adapter_id"], body["error"]) == ("done", record.adapter_id, None)
