"""Schemas of the operational answers: the fleet view engines reconcile against, health and
readiness, and the ingest records of trainer announcements."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel as Body
from pydantic import ConfigDict, Field

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
    pinned: bool = Field(
        default=False,
        description="kept resident: the version is pinned or a target of a pinned alias",
    )
    files: list[FleetFileOut]


class FleetAliasTargetOut(Body):
    version: str
    adapter_id: str
    weight: int = Field(ge=1, le=100)


class FleetAliasOut(Body):
    """An alias engines route (``namespace/name@alias``); ``implicit`` for ``latest``, the
    highest ready version (revision 0). Every target is in the view's ``adapters``."""

    namespace: str
    name: str
    alias: str
    revision: int
    generation: int
    implicit: bool
    pinned: bool
    targets: list[FleetAliasTargetOut]


class FleetView(Body):
    """What engines of ``base_model`` serve: every ready version with its canonical files,
    and the aliases that route to them."""

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
                    "pinned": False,
                    "files": [{k: v for k, v in FILE_EXAMPLE.items() if k != "role"}],
                }
            ],
            "aliases": [
                {
                    "namespace": "acme",
                    "name": "support-bot",
                    "alias": "latest",
                    "revision": 0,
                    "generation": 7,
                    "implicit": True,
                    "pinned": False,
                    "targets": [
                        {"version": "1.2.0", "adapter_id": ADAPTER_EXAMPLE["id"], "weight": 100}
                    ],
                }
            ],
        }
    )

    base_model: str
    generation: int
    adapters: list[FleetAdapterOut]
    aliases: list[FleetAliasOut] = []


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
