"""What every API schema shares: the strict request base, the list envelope and its
``Pagination``, the answer-model config with its example, timestamps and the approval policy."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field
from pydantic import BaseModel as Body
from pydantic_core import to_json
from starlette.responses import Response

Policy = Literal["auto", "manual"]

# An ISO 8601 date or date-time (what the schema documents). Pydantic alone also takes a bare
# number as Unix time, so ``from=-10801`` would be a date in 1969 instead of a 422.
_ISO_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}([T ].*)?", re.ASCII)


def _iso_only(value: object) -> object:
    if isinstance(value, str) and _ISO_INSTANT.fullmatch(value) is None:
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-12-01T00:00:00Z")
    return value


def _utc_if_naive(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# A time bound in a query (``from``, ``to``): ISO 8601 only; without a zone it is UTC.
QueryInstant = Annotated[datetime, BeforeValidator(_iso_only), AfterValidator(_utc_if_naive)]


def not_nullable(schema: dict[str, Any]) -> None:
    """Document a field as never null although the model lets null through, so the service
    answers it (after a 404 for a missing resource) with a precise 400."""
    variants = [v for v in schema.pop("anyOf", []) if v.get("type") != "null"]
    if variants:
        schema.update(variants[0])
    schema.pop("default", None)


class StrictBody(Body):
    model_config = ConfigDict(extra="forbid")


def json_answer(body: Any) -> Response:
    """``body`` as the JSON answer, serialised once in Rust (``pydantic_core.to_json``) and
    not validated against the route's ``response_model`` again, which was a quarter of a list
    page's CPU. Only for bodies built in their model's exact shape (``adapter_out``);
    tests/store/test_api_list_shape.py holds them equal to the validated answer."""
    return Response(content=to_json(body), media_type="application/json")


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
