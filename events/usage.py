"""Usage metering: what engines report about finished requests, and where.

Every engine counts finished requests per (token, namespace, adapter, alias, base model,
hour) and flushes the counts every ``LORAFLEET_ENGINE_USAGE_FLUSH_SECONDS`` as one ``UsageFlush`` on
``lorafleet:usage``. A worker (consumer group ``lorafleet-usage``) folds flushes into hourly
buckets; ``(engine_id, flush_id)`` makes that idempotent: a flush delivered twice counts
once. ``flush_id`` is ``<boot id>-<sequence>``, so an engine that restarts never reuses one.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from events.models import Event, event_json

MAX_USAGE_ROWS = 200  # rows per flush; an engine splits a bigger interval into several flushes


class UsageCount(BaseModel):
    """The counts of one (token, namespace, adapter, alias, hour) during one flush interval."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hour: datetime = Field(description="start of the UTC hour the requests finished in")
    token_id: int | None = Field(default=None, description="None: bootstrap admin or no auth")
    namespace: str | None = Field(default=None, max_length=63)  # None: the base model
    adapter: str | None = Field(default=None, max_length=256)  # namespace/name@version served
    # The alias the requests named (namespace/name@alias, the bare namespace/name as
    # namespace/name@latest); None for exact coordinates or the base model.
    alias: str | None = Field(default=None, max_length=256)
    requests: int = Field(default=0, ge=0)
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    cancelled: int = Field(default=0, ge=0)
    latency_ms: int = Field(default=0, ge=0, description="summed over the requests")


class UsageFlush(Event):
    """``usage.flush``: one engine's counts since its previous flush."""

    TYPE: ClassVar[str] = "usage.flush"
    type: Literal["usage.flush"] = "usage.flush"
    version: Literal[1] = 1
    engine_id: str = Field(min_length=1, max_length=128)
    flush_id: str = Field(min_length=1, max_length=80)
    base_model: str = Field(min_length=1, max_length=256)
    counts: list[UsageCount] = Field(max_length=MAX_USAGE_ROWS)


def decode_usage(fields: dict[bytes | str, bytes | str]) -> UsageFlush:
    """Parse one stream entry; ``ValueError`` for anything malformed or oversized."""
    return UsageFlush.model_validate_json(event_json(fields))
