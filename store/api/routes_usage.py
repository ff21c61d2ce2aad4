"""``GET /v1/usage``: metered engine usage (requests and tokens), tenant-scoped."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel as Body

from events.models import NAMESPACE_PATTERN
from store import usage
from store.api.deps import Caller, State
from store.api.errors import error_responses
from store.api.schemas.common import QueryInstant, entity_config
from store.db import session_scope

router = APIRouter(prefix="/v1", responses=error_responses(401))


class UsageRow(Body):
    namespace: str | None = None
    adapter: str | None = None
    alias: str | None = None
    token_id: int | None = None
    hour: str | None = None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int
    cancelled: int
    latency_ms: int | None = None
    mean_latency_ms: float | None = None


class UsageList(Body):
    model_config = entity_config(
        {
            "object": "list",
            "group_by": "version",
            "data": [
                {
                    "namespace": "acme",
                    "adapter": "acme/support-bot@1.0.0",
                    "requests": 12,
                    "prompt_tokens": 240,
                    "completion_tokens": 96,
                    "errors": 0,
                    "cancelled": 1,
                }
            ],
        }
    )

    object: Literal["list"] = "list"
    group_by: str
    data: list[UsageRow]


@router.get(
    "/usage",
    response_model=UsageList,
    response_model_exclude_unset=True,  # a row carries only its group's keys
    responses=error_responses(400, 404),
)
def get_usage(
    caller: Caller,
    state: State,
    namespace: Annotated[
        str | None, Query(min_length=1, max_length=63, pattern=NAMESPACE_PATTERN)
    ] = None,
    adapter: Annotated[
        str | None,
        Query(max_length=256, description="ns/name or ns/name@version (the version served)"),
    ] = None,
    alias: Annotated[
        str | None, Query(max_length=256, description="ns/name@alias (the alias named)")
    ] = None,
    from_: Annotated[QueryInstant | None, Query(alias="from")] = None,
    to: QueryInstant | None = None,
    group_by: Literal["version", "adapter", "token", "hour", "alias"] = "version",
) -> dict[str, Any]:
    """Requests, prompt and completion tokens, errors and cancellations the engines metered,
    in hourly buckets summed by ``group_by``; ``from`` <= hour < ``to``. Any token of a
    namespace sees that namespace's usage only; asking for another's answers the missing
    one's 404. ``group_by=alias`` gives one row per arm: the alias a request named
    (``alias``, None for exact coordinates), the version it was served (``adapter``), and
    the arm's summed and mean latency. Engines flush every few seconds and a worker folds
    the flushes, so the last seconds may not be here yet."""
    with session_scope(state.engine) as session:
        data = usage.usage_report(
            session,
            caller,
            namespace=namespace,
            adapter=adapter,
            alias=alias,
            start=from_,
            end=to,
            group_by=group_by,
        )
    return {"object": "list", "group_by": group_by, "data": data}
