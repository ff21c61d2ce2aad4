"""Event contracts: committed JSON Schemas match the models; malformed events are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from events.contracts import SCHEMA_DIR, drifted_schemas, schema_documents, write_schemas
from events.models import JobCompleted, decode


def test_committed_schemas_match_the_models() -> None:
    assert drifted_schemas() == [], "run `lorafleet events schemas --write` and commit the files"
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.json")) == sorted(schema_documents())


def test_schema_drift_is_detected(tmp_path: Path) -> None:
    write_schemas(tmp_path)
    assert drifted_schemas(tmp_path) == []
    target = tmp_path / "customizer.job.completed.v1.json"
    doc = json.loads(target.read_text())
    doc["required"].remove("artifact_uri")
    target.write_text(json.dumps(doc))
    assert drifted_schemas(tmp_path) == ["customizer.job.completed.v1.json"]


def test_job_completed_schema_requires_the_announcement_fields() -> None:
    doc = schema_documents()["customizer.job.completed.v1.json"]
    assert set(doc["required"]) == {
        "job_id",
        "namespace",
        "output_model",
        "base_model",
        "artifact_uri",
    }
    assert doc["additionalProperties"] is False
    assert "?P<" not in doc["properties"]["output_model"]["pattern"]


def _job(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "type": "customizer.job.completed",
        "job_id": "j1",
        "namespace": "acme",
        "output_model": "acme/bot@1.0.0",
        "base_model": "tiny",
        "artifact_uri": "file:///data/j1",
    }
    fields.update(overrides)
    return fields


def test_decode_round_trips_an_encoded_event() -> None:
    event = JobCompleted.model_validate(_job())
    assert decode(event.encode()) == event


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"output_model": "acme/bot"}, "namespace/name@version"),
        ({"namespace": "other"}, "does not match"),
        ({"extra_field": 1}, "extra"),
        ({"version": 2}, "version"),
    ],
)
def test_malformed_events_are_refused_with_a_reason(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        decode({"event": json.dumps(_job(**overrides))})
