"""Schemas of the catalog: namespaces, base models and tokens (requests, answers, examples)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field
from pydantic import BaseModel as Body

from events.models import NAMESPACE_PATTERN
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
from store.api.schemas.text import (
    BaseModelText,
    NamespaceText,
    SafeText,
    check_json_strings,
)
from store.models import BaseModelRecord, Namespace

JsonObject = Annotated[dict[str, Any], AfterValidator(lambda v: check_json_strings(v, "config"))]


class NamespaceCreate(StrictBody):
    name: NamespaceText = Field(pattern=NAMESPACE_PATTERN)
    # Safe by default: a new namespace's uploads wait for an approval before engines serve them.
    approval_policy: Policy = "manual"
    max_bytes: int | None = Field(default=None, ge=0)
    max_versions: int | None = Field(default=None, ge=0)
    description: SafeText | None = None
    # Four-eyes: the approver of a version must not be its uploader (needs manual policy).
    require_distinct_approver: bool = False


class NamespaceUpdate(StrictBody):
    approval_policy: Policy | None = Field(default=None, json_schema_extra=not_nullable)
    max_bytes: int | None = Field(default=None, ge=0)
    max_versions: int | None = Field(default=None, ge=0)
    description: SafeText | None = None
    require_distinct_approver: bool | None = Field(default=None, json_schema_extra=not_nullable)


class BaseModelCreate(StrictBody):
    name: BaseModelText
    config: JsonObject


def namespace_out(ns: Namespace) -> dict[str, Any]:
    return {"object": "namespace", **ns.model_dump(mode="json")}


def base_model_out(bm: BaseModelRecord) -> dict[str, Any]:
    return {"object": "base_model", **bm.model_dump(mode="json")}


NAMESPACE_EXAMPLE: dict[str, Any] = {
    "object": "namespace",
    "name": "acme",
    "approval_policy": "manual",
    "max_bytes": 10_737_418_240,
    "max_versions": None,
    "description": "Acme's support adapters",
    "require_distinct_approver": False,
    "created_at": EXAMPLE_TIME,
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
    "created_at": EXAMPLE_TIME,
    "created_by": "admin",
}


class NamespaceOut(Body):
    """A namespace (tenant): its approval policy and quotas."""

    model_config = entity_config(NAMESPACE_EXAMPLE)

    object: Literal["namespace"] = "namespace"
    name: str
    approval_policy: Policy
    max_bytes: int | None = None
    max_versions: int | None = None
    description: str | None = None
    require_distinct_approver: bool = False
    created_at: Timestamp
    created_by: str


class NamespaceList(Body):
    model_config = entity_config(list_example(NAMESPACE_EXAMPLE))

    object: Literal["list"] = "list"
    data: list[NamespaceOut]
    pagination: Pagination


class BaseModelOut(Body):
    """A registered base model: the dimensions adapters are checked against."""

    model_config = entity_config(BASE_MODEL_EXAMPLE)

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
    model_config = entity_config(list_example(BASE_MODEL_EXAMPLE))

    object: Literal["list"] = "list"
    data: list[BaseModelOut]
    pagination: Pagination
