"""Engine heartbeats: which engines are alive, what they serve and hold, at which generation.

Each engine writes its ``EngineHeartbeat`` every few seconds to
``lorafleet:fleet:engine:<engine id>`` with a TTL of a few intervals: an engine that dies
disappears when its key expires. The registry reads them for ``GET /v1/fleet/engines``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import redis
from pydantic import BaseModel, ConfigDict, Field

from events.streams import ENGINE_HEARTBEAT_PREFIX

MAX_HEARTBEAT_BYTES = 1024 * 1024


class EngineHeartbeat(BaseModel):
    """One engine's state as it last reported it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine_id: str = Field(min_length=1, max_length=128)
    base_model: str = Field(min_length=1, max_length=256)
    generation: int | None = Field(default=None, description="the fleet generation applied")
    ready: bool
    servable: int = Field(ge=0, description="adapters /v1/models lists")
    gpu: list[str] = Field(default_factory=list, description="adapters in GPU slots")
    cpu: list[str] = Field(default_factory=list, description="adapters in the CPU cache")
    ttl_seconds: float = Field(gt=0)
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def publish_heartbeat(client: redis.Redis, beat: EngineHeartbeat) -> None:
    """Write ``beat`` with its TTL (one SET ... PX: value and expiry change together)."""
    client.set(
        ENGINE_HEARTBEAT_PREFIX + beat.engine_id,
        beat.model_dump_json(),
        px=int(beat.ttl_seconds * 1000),
    )


def live_heartbeats(client: redis.Redis) -> list[EngineHeartbeat]:
    """Every unexpired heartbeat, by engine id; an unreadable one is skipped."""
    keys = sorted(client.scan_iter(match=ENGINE_HEARTBEAT_PREFIX + "*", count=500))
    beats: list[EngineHeartbeat] = []
    for raw in client.mget(keys) if keys else []:
        if raw is None or len(raw) > MAX_HEARTBEAT_BYTES:
            continue  # expired between SCAN and MGET, or not ours to parse
        try:
            beats.append(EngineHeartbeat.model_validate_json(raw))
        except ValueError:
            continue
    return sorted(beats, key=lambda b: b.engine_id)
