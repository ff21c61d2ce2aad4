"""What every API schema shares: the strict request base, the list envelope and its
``Pagination``, the answer-model config with its example, timestamps and the approval policy."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel as Body
from pydantic import ConfigDict, Field

Policy = Literal["auto", "manual"]


def not_nullable(schema: dict[str, Any]) -> None:
    """Document a field as never null although the model lets null through, so the service
    answers it (after a 404 for a missing resource) with a precise 400."""
    variants = [v for v in schema.pop("anyOf", []) if v.get("type") != "null"]
    if variants:
        schema.update(variants[0])
    schema.pop("default", None)


class StrictBody(Body):
    model_config = ConfigDict(extra="forbid")


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


# --- response models ---------------------------------------------------------------------
# What the routes answer, for the OpenAPI schema (``/docs``) and as a check on the answers:
# FastAPI validates each answer against its model. ``extra="allow"`` keeps a field a model does
# not name yet in the answer instead of silently dropping it.

EXAMPLE_TIME = "2026-11-23T10:00:00Z"
# Timestamps stay the strings the entities serialise to (RFC 3339, UTC).
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


def entity_config(example: dict[str, Any]) -> ConfigDict:
    """An answer model's config: extra fields kept, ``example`` shown in the schema."""
    return ConfigDict(extra="allow", json_schema_extra={"examples": [example]})


def list_example(item: dict[str, Any]) -> dict[str, Any]:
    """A one-item page of ``item``, the example of a list answer."""
    return page_of([item], page=1, page_size=1, total=1)


class Pagination(Body):
    page: int
    page_size: int
    total: int
    total_pages: int
