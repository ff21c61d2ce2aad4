"""Request bodies and the JSON shapes of the API's entities and lists."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel as Body
from pydantic import ConfigDict, Field

from events.models import NAMESPACE_PATTERN
from store.api.errors import ErrorDetail
from store.approval import Status
from store.models import AdapterFile, AdapterVersion, BaseModelRecord, Namespace

Policy = Literal["auto", "manual"]


def _not_nullable(schema: dict[str, Any]) -> None:
    """Document a field as never null although the model lets null through, so the service
    answers it (after a 404 for a missing resource) with a precise 400."""
    variants = [v for v in schema.pop("anyOf", []) if v.get("type") != "null"]
    if variants:
        schema.update(variants[0])
    schema.pop("default", None)


class _Strict(Body):
    model_config = ConfigDict(extra="forbid")


class NamespaceCreate(_Strict):
    name: str = Field(min_length=1, max_length=63, pattern=NAMESPACE_PATTERN)
    # Safe by default: a new namespace's uploads wait for an approval before engines serve them.
    approval_policy: Policy = "manual"
    max_bytes: int | None = Field(default=None, ge=0)
    max_versions: int | None = Field(default=None, ge=0)
    description: str | None = None


class NamespaceUpdate(_Strict):
    approval_policy: Policy | None = Field(default=None, json_schema_extra=_not_nullable)
    max_bytes: int | None = Field(default=None, ge=0)
    max_versions: int | None = Field(default=None, ge=0)
    description: str | None = None


class BaseModelCreate(_Strict):
    name: str = Field(min_length=1, max_length=256)
    config: dict[str, Any]


class TokenCreate(_Strict):
    role: Literal["reader", "writer", "admin"]
    namespace: str | None = None
    name: str = Field(min_length=1, max_length=256)


class AdapterPatch(_Strict):
    """A status change (approval flow) and/or metadata edits; content never changes."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    status: Literal["ready", "rejected", "archived"] | None = Field(
        default=None, json_schema_extra=_not_nullable
    )
    reason: str | None = Field(default=None, max_length=4096)
    description: str | None = None
    custom_fields: dict[str, Any] | None = None


def page_of(data: list[dict[str, Any]], *, page: int, page_size: int, total: int) -> dict:
    """The list envelope every collection endpoint returns."""
    return {
        "object": "list",
        "data": data,
        "pagination": {
            "page": page,
            "page_size": page_size,
            "total": total,
            "total_pages": math.ceil(total / page_size) if page_size else 0,
        },
    }


def namespace_out(ns: Namespace) -> dict[str, Any]:
    return {"object": "namespace", **ns.model_dump(mode="json")}


def base_model_out(bm: BaseModelRecord) -> dict[str, Any]:
    return {"object": "base_model", **bm.model_dump(mode="json")}


def file_out(f: AdapterFile) -> dict[str, Any]:
    return {"path": f.path, "role": f.role, "sha256": f.sha256, "size": f.size}


def adapter_out(v: AdapterVersion, files: list[AdapterFile] | None = None) -> dict[str, Any]:
    """An adapter version; ``files`` lists both roles (``original`` as uploaded and
    ``canonical`` HF PEFT) so clients pick the package they load. Without ``files`` (list
    pages) the manifest is left out too."""
    body = v.model_dump(mode="json")
    body["object"] = "adapter"
    body["coordinates"] = v.coordinates
    body["provenance"] = {
        "job_id": v.job_id,
        "dataset": v.dataset,
        "hyperparameters": v.hyperparameters or {},
        "metrics": v.metrics or {},
    }
    if files is None:
        body.pop("manifest", None)  # lists stay light; the entity has it
    else:
        body["files"] = [file_out(f) for f in files]
    return body


# --- response models ---------------------------------------------------------------------
# What the routes answer, for the OpenAPI schema (``/docs``) and as a check on the answers:
# FastAPI validates each answer against its model. ``extra="allow"`` keeps a field a model does
# not name yet in the answer instead of silently dropping it.

_EXAMPLE_TIME = "2026-11-23T10:00:00Z"
# Timestamps stay the strings the entities serialise to (RFC 3339, UTC).
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


def _out(example: dict[str, Any]) -> ConfigDict:
    return ConfigDict(extra="allow", json_schema_extra={"examples": [example]})


def _list_example(item: dict[str, Any]) -> dict[str, Any]:
    return page_of([item], page=1, page_size=1, total=1)


NAMESPACE_EXAMPLE: dict[str, Any] = {
    "object": "namespace",
    "name": "acme",
    "approval_policy": "manual",
    "max_bytes": 10_737_418_240,
    "max_versions": None,
    "description": "Acme's support adapters",
    "created_at": _EXAMPLE_TIME,
    "created_by": "admin",
}
BASE_MODEL_EXAMPLE: dict[str, Any] = {
    "object": "base_model",
    "name": "meta/llama-3-8b",
    "architecture": "LlamaForCausalLM",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_layers": 32,
    "num_heads": 32,
    "num_kv_heads": 8,
    "head_dim": 128,
    "vocab_size": 128256,
    "config": {"model_type": "llama", "hidden_size": 4096},
    "created_at": _EXAMPLE_TIME,
    "created_by": "admin",
}
_SHA = "9f2c" + "0" * 60
FILE_EXAMPLE: dict[str, Any] = {
    "path": "adapter_model.safetensors",
    "role": "canonical",
    "sha256": _SHA,
    "size": 10_485_760,
}
ADAPTER_EXAMPLE: dict[str, Any] = {
    "object": "adapter",
    "id": "ad_01JD7Q3B9W4N6X8Y2Z5A7C9E1G",
    "coordinates": "acme/support-bot@1.2.0",
    "namespace": "acme",
    "name": "support-bot",
    "version": "1.2.0",
    "base_model": "meta/llama-3-8b",
    "format": "hf_peft",
    "rank": 16,
    "alpha": 32.0,
    "target_modules": ["q_proj", "v_proj"],
    "job_id": "job-42",
    "dataset": "s3://acme-data/support-v3",
    "hyperparameters": {"learning_rate": 0.0002, "epochs": 3},
    "metrics": {"eval_loss": 1.21},
    "provenance": {
        "job_id": "job-42",
        "dataset": "s3://acme-data/support-v3",
        "hyperparameters": {"learning_rate": 0.0002, "epochs": 3},
        "metrics": {"eval_loss": 1.21},
    },
    "description": "Support bot, third data refresh",
    "custom_fields": {"owner": "support-ml"},
    "status": "ready",
    "status_code": None,
    "status_reason": None,
    "content_sha256": _SHA,
    "manifest_sha256": _SHA,
    "total_bytes": 10_486_272,
    "created_at": _EXAMPLE_TIME,
    "created_by": "token:trainer@acme",
    "updated_at": _EXAMPLE_TIME,
    "updated_by": "token:trainer@acme",
    "generation": 7,
    "files": [FILE_EXAMPLE],
}


class Pagination(Body):
    page: int
    page_size: int
    total: int
    total_pages: int


class NamespaceOut(Body):
    """A namespace (tenant): its approval policy and quotas."""

    model_config = _out(NAMESPACE_EXAMPLE)

    object: Literal["namespace"] = "namespace"
    name: str
    approval_policy: Policy
    max_bytes: int | None = None
    max_versions: int | None = None
    description: str | None = None
    created_at: Timestamp
    created_by: str


class NamespaceList(Body):
    model_config = _out(_list_example(NAMESPACE_EXAMPLE))

    object: Literal["list"] = "list"
    data: list[NamespaceOut]
    pagination: Pagination


class BaseModelOut(Body):
    """A registered base model: the dimensions adapters are checked against."""

    model_config = _out(BASE_MODEL_EXAMPLE)

    object: Literal["base_model"] = "base_model"
    name: str
    architecture: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    config: dict[str, Any]
    created_at: Timestamp
    created_by: str


class BaseModelList(Body):
    model_config = _out(_list_example(BASE_MODEL_EXAMPLE))

    object: Literal["list"] = "list"
    data: list[BaseModelOut]
    pagination: Pagination


class FileOut(Body):
    """One file of an adapter version: ``original`` (as uploaded) or ``canonical`` (HF PEFT)."""

    model_config = _out(FILE_EXAMPLE)

    path: str
    role: Literal["original", "canonical"]
    sha256: str
    size: int


class ProvenanceOut(Body):
    job_id: str | None = None
    dataset: str | None = None
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]


class AdapterOut(Body):
    """An adapter version. ``files`` and ``manifest`` are in the entity, not in list pages."""

    model_config = _out(ADAPTER_EXAMPLE)

    object: Literal["adapter"] = "adapter"
    id: str
    coordinates: str
    namespace: str
    name: str
    version: str
    base_model: str
    format: str | None = None
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | None = None
    job_id: str | None = None
    dataset: str | None = None
    hyperparameters: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    provenance: ProvenanceOut
    description: str | None = None
    custom_fields: dict[str, Any] | None = None
    status: Status
    status_code: str | None = None
    status_reason: str | None = None
    content_sha256: str | None = None
    manifest_sha256: str | None = None
    manifest: dict[str, Any] | None = None
    total_bytes: int
    created_at: Timestamp
    created_by: str
    updated_at: Timestamp
    updated_by: str
    generation: int
    files: list[FileOut] | None = None


class AdapterList(Body):
    model_config = _out(_list_example({k: v for k, v in ADAPTER_EXAMPLE.items() if k != "files"}))

    object: Literal["list"] = "list"
    data: list[AdapterOut]
    pagination: Pagination


class TokenOut(Body):
    """A minted token; ``token`` (the plaintext) is shown in this answer only."""

    model_config = _out(
        {
            "object": "token",
            "token": "lft_3q0Zb7XH1c2d3e4f5g6h7i8j9k0l1m2n3o4p5q6r7s8",
            "role": "reader",
            "namespace": "acme",
            "name": "nim-llama3-8b",
        }
    )

    object: Literal["token"] = "token"
    token: str
    role: Literal["reader", "writer", "admin"]
    namespace: str | None = None
    name: str


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

    model_config = _out(
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
                    "manifest_sha256": _SHA,
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
    model_config = _out({"status": "ok"})

    status: Literal["ok"]


class Readiness(Body):
    """``checks`` names each dependency: ``ok`` or what failed; ``error`` only when one did."""

    model_config = _out({"status": "ok", "checks": {"database": "ok", "blob_store": "ok"}})

    status: Literal["ok", "unavailable"]
    checks: dict[str, str]
    error: dict[str, str] | None = None


class UploadCheckOut(Body):
    """An upload to these coordinates would be accepted up to its files: the caller may write
    the namespace, the coordinates are valid and the base model is registered."""

    model_config = _out(
        {
            "object": "upload_check",
            "coordinates": "acme/support-bot@1.2.0",
            "base_model": "meta/llama-3-8b",
            "approval_policy": "manual",
            "exists": False,
        }
    )

    object: Literal["upload_check"] = "upload_check"
    coordinates: str
    base_model: str
    approval_policy: Policy
    exists: bool = Field(
        description="A version already holds these coordinates: the same bytes get it back, "
        "other bytes a 409 version_conflict."
    )


class AdapterDeleted(Body):
    """The answer to ``DELETE ...?purge=true``: the row is gone."""

    model_config = _out({"object": "adapter", "id": ADAPTER_EXAMPLE["id"], "deleted": True})

    object: Literal["adapter"] = "adapter"
    id: str
    deleted: Literal[True]


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
