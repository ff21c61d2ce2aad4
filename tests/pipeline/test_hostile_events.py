"""Hostile inputs through the event pipeline: real bridge, real Celery worker subprocess.

The API side of the same corpus (``support.hostile``) is
``tests/security/test_hostile_uploads.py``; here each case is delivered as a trainer would:
files under the artifact root, announced on ``lorafleet:customizer:jobs``.

* Broken events (malformed JSON, missing fields, wrong types, oversized, unknown type, bad
  coordinates, namespace mismatch, ...) → dead-lettered with a precise reason, never run.
* Artifact URIs outside the allowed roots or on non-public hosts → ``failed`` with
  ``artifact_not_allowed``.
* Hostile or broken adapter files → the ingest record and the version ``failed`` with the
  stable code; a pickle's marker file is never created.

Every case is published in one burst and judged once all outcomes are in. Afterwards a good
adapter becomes ``ready`` with a refresh ``load`` entry, and the ready versions are exactly
the good ones.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pipeline_harness import BASE_MODEL, Pipeline
from support import hostile
from support.factories import random_adapter, write_hf_peft
from support.tiny import tiny_spec

from events import streams
from events.dlq import DeadLetter, list_dead_letters
from events.models import MAX_EVENT_BYTES, FleetRefresh, JobCompleted
from events.publisher import publish
from store.models import AdapterVersion, IngestRecord

NS = "acme"


@pytest.fixture(scope="module")
def pipeline_env() -> dict[str, str]:
    """The API suite's limits, so its builders produce the same refusals here."""
    return {
        "LORAFLEET_MAX_LORA_RANK": str(hostile.MAX_RANK),
        "LORAFLEET_MAX_FILE_BYTES": str(hostile.MAX_FILE),
        "LORAFLEET_MAX_ADAPTER_BYTES": str(hostile.MAX_UPLOAD),
    }


# --- events that must be dead-lettered ---------------------------------------------------


def _event(**overrides: Any) -> dict[str, Any]:
    good = JobCompleted(
        job_id=f"job-{uuid.uuid4().hex[:8]}",
        namespace=NS,
        output_model=f"{NS}/dlq-{uuid.uuid4().hex[:8]}@1.0.0",
        base_model=BASE_MODEL,
        artifact_uri="file:///nowhere",
    ).model_dump(mode="json")
    for key, value in overrides.items():
        if value is _DROP:
            good.pop(key)
        else:
            good[key] = value
    return good


_DROP = object()


def _json(**overrides: Any) -> dict[str, str | bytes]:
    return {"event": json.dumps(_event(**overrides))}


def _huge() -> dict[str, str | bytes]:
    fields = _json(hyperparameters={f"k{i}": "v" * 100 for i in range(1000)})
    assert len(fields["event"]) > MAX_EVENT_BYTES
    return fields


def _refresh_on_jobs_stream() -> dict[str, str | bytes]:
    refresh = FleetRefresh(
        action="load", adapter_id="ad_x", adapter="acme/x@1.0.0", base_model="b", generation=1
    )
    return refresh.encode()  # type: ignore[return-value]


# name -> (stream entry fields, fragments the DLQ reason must contain)
DLQ_CASES: dict[str, tuple[Callable[[], dict[str, str | bytes]], tuple[str, ...]]] = {
    "malformed_json": (lambda: {"event": '{"type": "customizer.job.completed", '}, ("json",)),
    "not_json_at_all": (lambda: {"event": "\x00\x01garbage"}, ("json",)),
    "not_utf8": (lambda: {"event": b"\xff\xfe\xfa{}"}, ("invalid_event",)),
    "json_array": (lambda: {"event": "[1, 2, 3]"}, ("invalid_event",)),
    "no_event_field": (lambda: {"payload": "{}"}, ("no 'event' field",)),
    "missing_job_id": (lambda: _json(job_id=_DROP), ("job_id", "missing")),
    "missing_artifact_uri": (lambda: _json(artifact_uri=_DROP), ("artifact_uri", "missing")),
    "missing_output_model": (lambda: _json(output_model=_DROP), ("output_model", "missing")),
    "missing_type": (lambda: _json(type=_DROP), ("type",)),
    "job_id_wrong_type": (lambda: _json(job_id=12345), ("job_id", "string")),
    "hyperparameters_wrong_type": (lambda: _json(hyperparameters=[1, 2]), ("hyperparameters",)),
    "artifact_uri_empty": (lambda: _json(artifact_uri=""), ("artifact_uri",)),
    "event_id_too_long": (lambda: _json(event_id="e" * 500), ("event_id",)),
    "unexpected_extra_field": (lambda: _json(shell="rm -rf /"), ("shell", "extra")),
    "huge_event": (_huge, ("bytes", f"{MAX_EVENT_BYTES}")),
    "unknown_event_type": (lambda: _json(type="customizer.job.started"), ("type",)),
    "unsupported_event_version": (lambda: _json(version=2), ("version",)),
    "full_finetune_not_lora": (lambda: _json(finetuning_type="full"), ("finetuning_type",)),
    "other_event_on_jobs_stream": (_refresh_on_jobs_stream, ("unexpected_event_type",)),
    "coordinates_without_version": (
        lambda: _json(output_model=f"{NS}/bot"),
        ("output_model", "namespace/name@version"),
    ),
    "coordinates_not_semver": (
        lambda: _json(output_model=f"{NS}/bot@latest"),
        ("namespace/name@version",),
    ),
    "coordinates_traversal": (
        lambda: _json(output_model=f"{NS}/../../etc@1.0.0"),
        ("namespace/name@version",),
    ),
    "coordinates_uppercase_namespace": (
        lambda: _json(namespace="ACME", output_model="ACME/bot@1.0.0"),
        ("namespace/name@version",),
    ),
    "namespace_mismatch": (
        lambda: _json(namespace="other", output_model=f"{NS}/bot@1.0.0"),
        ("namespace 'other' does not match",),
    ),
}


# --- artifact URIs that must be refused --------------------------------------------------

# name -> artifact_uri, or a builder given the artifacts root
URI_CASES: dict[str, Callable[[Path], str]] = {
    "uri_file_etc": lambda root: "file:///etc",
    "uri_file_etc_passwd": lambda root: "file:///etc/passwd",
    "uri_file_dotdot_escape": lambda root: f"file://{root}/../../../../etc",
    "uri_file_symlink_out_of_roots": lambda root: _symlink(root, "/etc"),
    "uri_http_loopback": lambda root: "http://127.0.0.1:9/adapter.nemo",
    "uri_http_ipv6_loopback": lambda root: "http://[::1]:9/adapter.nemo",
    "uri_http_localhost": lambda root: "http://localhost:9/adapter.nemo",
    "uri_http_link_local_metadata": lambda root: "http://169.254.169.254/latest/meta-data/",
    "uri_http_private": lambda root: "http://10.0.0.1/adapter.nemo",
    "uri_unsupported_scheme": lambda root: "gopher://example.com/adapter",
}


def _symlink(root: Path, target: str) -> str:
    link = root / f"link-{uuid.uuid4().hex[:8]}"
    link.symlink_to(target)
    return link.as_uri()


# --- adapter-level cases: the API suite's corpus -----------------------------------------

# HTTP-only concerns (multipart file names) have no event-pipeline equivalent.
ADAPTER_CASES = {n: b for n, b in hostile.CASES.items() if not n.startswith("upload_name_")}


@dataclass
class Outcome:
    record: IngestRecord | None = None
    version: AdapterVersion | None = None
    dead: DeadLetter | None = None
    expected_code: str = ""
    marker: Path | None = None


@dataclass
class Corpus:
    outcomes: dict[str, Outcome]
    good_ready_ids: set[str]


def _coordinates(name: str) -> str:
    return f"{NS}/{name.replace('_', '-')}@1.0.0"


def _announce(pipeline: Pipeline, name: str, uri: str, base_model: str = BASE_MODEL) -> str:
    event = JobCompleted(
        job_id=f"job-{name}",
        namespace=NS,
        output_model=_coordinates(name),
        base_model=base_model,
        artifact_uri=uri,
    )
    publish(pipeline.redis, streams.JOBS_STREAM, event)
    return event.event_id


def _write(directory: Path, files: list[tuple[str, bytes]]) -> Path:
    for rel, data in files:
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return directory


def _wait_records(pipeline: Pipeline, event_ids: list[str], timeout: float = 240) -> None:
    def finished() -> bool:
        with pipeline.session() as s:
            rows = s.query(IngestRecord).filter(IngestRecord.event_id.in_(event_ids)).all()
            return len(rows) == len(event_ids) and all(r.status in ("done", "failed") for r in rows)

    try:
        pipeline.wait_for(finished, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; worker log tail:\n{pipeline.worker_log.read_text()[-4000:]}"
        ) from exc


@pytest.fixture(scope="module")
def corpus(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    build_root = tmp_path_factory.mktemp("hostile-build")
    outcomes: dict[str, Outcome] = {}
    events: dict[str, str] = {}

    # Adapter cases: build with the API suite's builders, then place under the artifact root.
    cases = {}
    firsts: dict[str, str] = {}
    for name, builder in ADAPTER_CASES.items():
        (build_root / name).mkdir()
        case = builder(build_root / name)
        cases[name] = case
        base = BASE_MODEL if case.base_model == hostile.BASE else case.base_model
        if case.first is not None:
            # An accepted version at the same coordinates, registered beforehand.
            first_dir = _write(pipeline.artifacts / f"{name}-first", case.first)
            firsts[name] = _announce(pipeline, name, first_dir.as_uri(), base)
    _wait_records(pipeline, list(firsts.values()))
    good_ready_ids = set()
    with pipeline.session() as s:
        for name, event_id in firsts.items():
            record = s.get(IngestRecord, event_id)
            assert record is not None and record.status == "done", (name, record)
            good_ready_ids.add(record.adapter_id)

    # The burst: every hostile case at once.
    for name, case in cases.items():
        base = BASE_MODEL if case.base_model == hostile.BASE else case.base_model
        directory = _write(pipeline.artifacts / name, case.files)
        events[name] = _announce(pipeline, name, directory.as_uri(), base)
        outcomes[name] = Outcome(expected_code=case.code, marker=case.marker)
    for name, uri_of in URI_CASES.items():
        events[name] = _announce(pipeline, name, uri_of(pipeline.artifacts))
        outcomes[name] = Outcome(expected_code="artifact_not_allowed")
    entry_ids = {}
    for name, fields in DLQ_CASES.items():
        entry_ids[name] = pipeline.redis.xadd(streams.JOBS_STREAM, fields[0]()).decode()
        outcomes[name] = Outcome(expected_code="dlq")

    _wait_records(pipeline, list(events.values()))

    def all_dead() -> dict[str, DeadLetter] | None:
        by_source = {d.source_id: d for d in list_dead_letters(pipeline.redis, count=1000)}
        found = {n: by_source[i] for n, i in entry_ids.items() if i in by_source}
        return found if len(found) == len(entry_ids) else None

    dead = pipeline.wait_for(all_dead, timeout=60)
    with pipeline.session() as s:
        for name, event_id in events.items():
            record = s.get(IngestRecord, event_id)
            outcomes[name].record = record
            if record is not None and record.adapter_id:
                outcomes[name].version = s.get(AdapterVersion, record.adapter_id)
    for name, letter in dead.items():
        outcomes[name].dead = letter
    return Corpus(outcomes=outcomes, good_ready_ids=good_ready_ids)


def test_the_corpus_is_large_enough() -> None:
    assert len(ADAPTER_CASES) + len(URI_CASES) + len(DLQ_CASES) >= 60
    assert len(ADAPTER_CASES) >= 30


@pytest.mark.parametrize("name", list(DLQ_CASES))
def test_broken_event_is_dead_lettered_with_a_precise_reason(corpus: Corpus, name: str) -> None:
    outcome = corpus.outcomes[name]
    assert outcome.dead is not None
    reason = outcome.dead.reason
    assert reason.startswith(("invalid_event:", "unexpected_event_type:")), reason
    for fragment in DLQ_CASES[name][1]:
        assert fragment.lower() in reason.lower(), (fragment, reason)


def test_dead_lettered_entries_are_acknowledged_and_never_recorded(
    corpus: Corpus, pipeline: Pipeline
) -> None:
    assert pipeline.redis.xpending(streams.JOBS_STREAM, streams.INGEST_GROUP)["pending"] == 0
    names = {_coordinates(n).split("/")[1].split("@")[0] for n in DLQ_CASES}
    with pipeline.session() as s:
        assert not s.query(AdapterVersion).filter(AdapterVersion.name.in_(names)).all()


@pytest.mark.parametrize("name", list(URI_CASES))
def test_artifact_uri_not_allowed_fails_the_version(corpus: Corpus, name: str) -> None:
    _assert_failed(corpus.outcomes[name])


@pytest.mark.parametrize("name", list(ADAPTER_CASES))
def test_hostile_adapter_fails_with_its_stable_code(
    corpus: Corpus, pipeline: Pipeline, name: str
) -> None:
    outcome = corpus.outcomes[name]
    if outcome.expected_code == "version_conflict":
        # The existing version holds the coordinates, untouched; the record carries it.
        record = outcome.record
        assert record is not None and record.status == "failed", record
        assert record.error_code == "version_conflict", record.error_message
        assert record.adapter_id is None or record.adapter_id in corpus.good_ready_ids
        with pipeline.session() as s:
            (row,) = s.query(AdapterVersion).filter_by(name=_coordinates(name)[5:-6]).all()
            assert row.status == "ready" and row.id in corpus.good_ready_ids
    else:
        _assert_failed(outcome)
        assert not pipeline.refresh_entries(outcome.version.id)  # type: ignore[union-attr]
    if outcome.marker is not None:
        assert not outcome.marker.exists(), "a pickle ran code in the worker"


def _assert_failed(outcome: Outcome) -> None:
    record, version, code = outcome.record, outcome.version, outcome.expected_code
    assert record is not None, "no ingest record"
    assert (record.status, record.error_code) == ("failed", code), record.error_message
    assert record.error_message
    assert version is not None, "no failed version recorded"
    assert (version.status, version.status_code) == ("failed", code), version.status_reason
    assert version.status_reason


def test_a_good_adapter_right_after_the_corpus_is_ready_and_nothing_else_is(
    corpus: Corpus, pipeline: Pipeline
) -> None:
    directory = pipeline.artifacts / "good-after-corpus"
    write_hf_peft(random_adapter(tiny_spec(), seed=4242), directory)
    event_id = _announce(pipeline, "good_after_corpus", directory.as_uri())
    _wait_records(pipeline, [event_id], timeout=90)
    with pipeline.session() as s:
        record = s.get(IngestRecord, event_id)
        assert record is not None and record.status == "done", record.error_message
        version = s.get(AdapterVersion, record.adapter_id)
        assert version is not None and version.status == "ready"
    (entry,) = pipeline.wait_for(lambda: pipeline.refresh_entries(version.id))
    refresh = FleetRefresh.model_validate_json(entry[1]["event"])
    assert (refresh.action, refresh.adapter) == ("load", _coordinates("good_after_corpus"))
    with pipeline.session() as s:
        ready = {v.id for v in s.query(AdapterVersion).filter_by(status="ready").all()}
    assert ready == corpus.good_ready_ids | {version.id}
    # Every refresh entry is a load of one of the good versions.
    loaded = {
        FleetRefresh.model_validate_json(f["event"]).adapter_id
        for _, f in pipeline.refresh_entries()
    }
    assert loaded == ready
