"""Schemas of adapter versions and their files: the PATCH body, the entity and list answers,
the upload check and the purge answer, with the examples the fleet view reuses."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field
from pydantic import BaseModel as Body
from pydantic_core import to_jsonable_python
from sqlalchemy import Row

from store.api.schemas.common import (
    EXAMPLE_TIME,
    Pagination,
    Policy,
    StrictBody,
    Timestamp,
    entity_config,
    list_example,
    not_nullable,
)
from store.api.schemas.text import SafeText, check_json_strings
from store.approval import Status
from store.models import AdapterFile, AdapterVersion

CustomFields = Annotated[
    dict[str, Any], AfterValidator(lambda v: check_json_strings(v, "custom_fields"))
]


class AdapterPatch(StrictBody):
    """A status change (approval flow) and/or metadata edits; content never changes."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    status: Literal["ready", "rejected", "archived"] | None = Field(
        default=None, json_schema_extra=not_nullable
    )
    reason: SafeText | None = None
    description: SafeText | None = None
    custom_fields: CustomFields | None = None
    pinned: bool | None = Field(
        default=None,
        json_schema_extra=not_nullable,
        description="keep the version resident on engines (preloaded, never LRU-evicted)",
    )
    drop_from_aliases: bool = Field(
        default=False,
        description="with a status out of ready: remove the version from the aliases that "
        "route to it (their other weights renormalised) instead of answering 409 alias_target",
    )


def file_out(f: AdapterFile) -> dict[str, Any]:
    return {"path": f.path, "role": f.role, "sha256": f.sha256, "size": f.size}


_VERSION_FIELDS = tuple(AdapterVersion.model_fields)
_TIME_FIELDS = ("created_at", "updated_at")


def adapter_out(v: Any, files: list[AdapterFile] | None = None) -> dict[str, Any]:
    """An adapter version (an ``AdapterVersion`` or a row of ``catalog.LIST_COLUMNS``) in
    the exact shape of ``AdapterOut``, JSON-ready: every field, so a list page can be sent
    without validating it again (``schemas.common.json_answer``). ``files`` lists both
    roles (``original`` as uploaded and ``canonical`` HF PEFT) so clients pick the package
    they load. Without ``files`` (list pages) the manifest is left out too (null)."""
    body: dict[str, Any] = {
        "object": "adapter",
        "coordinates": f"{v.namespace}/{v.name}@{v.version}",
    }
    if isinstance(v, Row):
        body.update(v._asdict())  # one C-level copy; a getattr per column cost more
    else:
        body.update((field, getattr(v, field)) for field in _VERSION_FIELDS)
    body.pop("manifest", None)
    for field in _TIME_FIELDS:
        body[field] = to_jsonable_python(body[field])
    body["provenance"] = {
        "job_id": body["job_id"],
        "dataset": body["dataset"],
        "hyperparameters": body["hyperparameters"] or {},
        "metrics": body["metrics"] or {},
    }
    if files is None:
        body["manifest"] = None  # lists stay light; the entity has it
        body["files"] = None
    else:
        body["manifest"] = v.manifest
        body["files"] = [file_out(f) for f in files]
    return body


EXAMPLE_SHA = "9f2c" + "0" * 60
FILE_EXAMPLE: dict[str, Any] = {
    "path": "adapter_model.safetensors",
    "role": "canonical",
    "sha256": EXAMPLE_SHA,
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
    "content_sha256": EXAMPLE_SHA,
    "manifest_sha256": EXAMPLE_SHA,
    "total_bytes": 10_486_272,
    "created_at": EXAMPLE_TIME,
    "created_by": "token:trainer@acme",
    "updated_at": EXAMPLE_TIME,
    "updated_by": "token:trainer@acme",
    "generation": 7,
    "files": [FILE_EXAMPLE],
}


class FileOut(Body):
    """One file of an adapter version: ``original`` (as uploaded) or ``canonical`` (HF PEFT)."""

    model_config = entity_config(FILE_EXAMPLE)

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

    model_config = entity_config(ADAPTER_EXAMPLE)

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
    model_config = entity_config(
        list_example({k: v for k, v in ADAPTER_EXAMPLE.items() if k != "files"})
    )

    object: Literal["list"] = "list"
    data: list[AdapterOut]
    pagination: Pagination


class UploadCheckOut(Body):
    """An upload to these coordinates would be accepted up to its files: the caller may write
    the namespace, the coordinates are valid and the base model is registered."""

    model_config = entity_config(
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

    model_config = entity_config(
        {"object": "adapter", "id": ADAPTER_EXAMPLE["id"], "deleted": True}
    )

    object: Literal["adapter"] = "adapter"
    id: str
    deleted: Literal[True]
