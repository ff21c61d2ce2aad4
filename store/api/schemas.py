"""Request bodies and the JSON shapes of the API's entities and lists."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel as Body
from pydantic import ConfigDict, Field

from store.models import AdapterFile, AdapterVersion, BaseModel, Namespace

Policy = Literal["auto", "manual"]
# The namespace part of ``events.models.COORDINATES_RE``; the registry enforces the same.
NAMESPACE_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"


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
    approval_policy: Policy = "auto"
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


def base_model_out(bm: BaseModel) -> dict[str, Any]:
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
