"""``GET /v1/fleet/engines``: the live engines (from their heartbeats in Redis)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Query
from pydantic import BaseModel as Body

from events.heartbeat import live_heartbeats
from store.api.deps import Caller, State
from store.api.errors import error_responses
from store.api.schemas.common import entity_config
from store.db import session_scope
from store.errors import TransientError
from store.fleet_engines import engines_view

router = APIRouter(prefix="/v1", responses=error_responses(401))


class EngineOut(Body):
    engine_id: str
    base_model: str
    ready: bool
    generation: int | None = None
    lag: int | None = None
    servable: int
    gpu: list[str]
    cpu: list[str]
    last_seen_seconds: float
    ttl_seconds: float
    holds: list[str] | None = None  # with ?adapter=: where it is resident


class EngineList(Body):
    model_config = entity_config(
        {
            "object": "list",
            "generation": 12,
            "data": [
                {
                    "engine_id": "gpu-node-1:8000",
                    "base_model": "meta/llama-3-8b",
                    "ready": True,
                    "generation": 12,
                    "lag": 0,
                    "servable": 31,
                    "gpu": ["acme/support-bot@1.2.0"],
                    "cpu": ["acme/support-bot@1.2.0", "acme/faq@0.3.0"],
                    "last_seen_seconds": 1.2,
                    "ttl_seconds": 15.0,
                }
            ],
        }
    )

    object: Literal["list"] = "list"
    generation: int
    data: list[EngineOut]


@router.get(
    "/fleet/engines",
    response_model=EngineList,
    response_model_exclude_unset=True,
    responses=error_responses(400, 404, 503),
)
def fleet_engines(
    caller: Caller,
    state: State,
    adapter: Annotated[
        str | None, Query(max_length=512, description="ns/name@version: who can serve it now")
    ] = None,
) -> dict[str, Any]:
    """Every live engine: id, base model, ``ready``, the generation it applied and its
    ``lag`` behind the registry's, how many adapters it serves, and which it holds in GPU
    slots and the CPU cache (only adapters of namespaces the caller may read). An engine
    is gone once its heartbeat's TTL passes. With ``adapter``: only the engines that can
    serve that version now, with ``holds`` saying where it is resident."""
    client = redis.Redis.from_url(
        state.settings.resolved_redis_url(), socket_timeout=5, socket_connect_timeout=5
    )
    try:
        beats = live_heartbeats(client)
    except redis.RedisError as exc:
        raise TransientError(f"cannot read engine heartbeats from Redis: {exc}") from exc
    finally:
        client.close()
    with session_scope(state.engine) as session:
        return engines_view(session, caller, beats, adapter)
