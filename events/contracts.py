"""JSON Schema documents for every event, generated from the pydantic models.

The committed files in ``events/schemas/<type>.v<version>.json`` are what non-Python
producers and consumers code against; ``tests/events/test_schemas.py`` fails when a model
changes without the files being regenerated (``lorafleet events schemas --write``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from events.models import AdapterStatusChanged, Event, FleetRefresh, JobCompleted
from events.revocations import TokenRevoked
from events.usage import UsageFlush

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
EVENT_MODELS: tuple[type[Event], ...] = (
    JobCompleted,
    FleetRefresh,
    AdapterStatusChanged,
    TokenRevoked,
    UsageFlush,
)


def schema_filename(model: type[Event]) -> str:
    """``<type>.v<version>.json`` for an event model."""
    version = model.model_fields["version"].default
    return f"{model.TYPE}.v{version}.json"


def schema_documents() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema (draft 2020-12) of each event model, deterministic."""
    documents: dict[str, dict[str, Any]] = {}
    for model in EVENT_MODELS:
        schema = model.model_json_schema(mode="validation")
        name = schema_filename(model)
        documents[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://lorafleet.dev/schemas/{name}",
            **schema,
        }
    return documents


def render(document: dict[str, Any]) -> str:
    """The exact text committed for a schema document (sorted keys, trailing newline)."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file into ``directory``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in schema_documents().items():
        path = directory / name
        path.write_text(render(document))
        written.append(path)
    return written


def drifted_schemas(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing or differ from the models (empty = in sync)."""
    drifted = []
    for name, document in schema_documents().items():
        path = directory / name
        if not path.is_file() or path.read_text() != render(document):
            drifted.append(name)
    return drifted
