"""Schemas of the operational answers: the fleet view engines reconcile against, health and
readiness, and the ingest records of trainer announcements."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel as Body
from pydantic import ConfigDict

from store.api.errors import ErrorDetail
from store.api.schemas.adapters import ADAPTER_EXAMPLE, EXAMPLE_SHA, FILE_EXAMPLE
from store.api.schemas.common import Pagination, Timestamp, entity_config


class FleetFileOut(Body):
    path: str
    sha256: str
    size: int


class FleetAdapterOut(Body):
    id: str
    name: str
    namespace: str
    version: str
    base_model: str
    rank: int | None = None
    alpha: float | None = None
    manifest_sha256: str | None = None
    generation: int
    files: list[FleetFileOut]


class FleetView(Body):
    """What engines of ``base_model`` serve: every ready version with its canonical files."""

    model_config = entity_config(
        {
            "base_model": "meta/llama-3-8b",
            "generation": 7,
            "adapters": [
                {
                    "id": ADAPTER_EXAMPLE["id"],
                    "name": "support-bot",
                    "namespace": "acme",
                    "version": "1.2.0",
                    "base_model": "meta/llama-3-8b",
                    "rank": 16,
                    "alpha": 32.0,
                    "manifest_sha256": EXAMPLE_SHA,
                    "generation": 7,
                    "files": [{k: v for k, v in FILE_EXAMPLE.items() if k != "role"}],
                }
            ],
        }
    )

    base_model: str
    generation: int
    adapters: list[FleetAdapterOut]


class Liveness(Body):
    model_config = entity_config({"status": "ok"})

    status: Literal["ok"]


class Readiness(Body):
    """``checks`` names each dependency: ``ok`` or what failed; ``error`` only when one did."""

    model_config = entity_config({"status": "ok", "checks": {"database": "ok", "blob_store": "ok"}})

    status: Literal["ok", "unavailable"]
    checks: dict[str, str]
    error: dict[str, str] | None = None


class IngestRecordOut(Body):
    """What became of one trainer announcement (``received`` → ``enqueued`` → ``done`` |
    ``failed``); ``error`` is set exactly when it failed."""

    model_config = ConfigDict(extra="allow")

    object: Literal["ingest_record"] = "ingest_record"
    event_id: str
    job_id: str | None = None
    namespace: str | None = None
    output_model: str | None = None
    base_model: str | None = None
    status: str
    adapter_id: str | None = None
    error: ErrorDetail | None = None
    received_at: Timestamp | None = None
    updated_at: Timestamp | None = None


class IngestList(Body):
    model_config = ConfigDict(extra="allow")

    object: Literal["list"] = "list"
    data: list[IngestRecordOut]
    pagination: Pagination
