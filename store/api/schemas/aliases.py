"""Schemas of aliases (``namespace/name@alias``): the PUT body, the alias entity, its list
and its history, and the pin PATCH body's field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel as Body
from pydantic import ConfigDict, Field

from events.models import VERSION_MAX_LENGTH
from store.aliases import MAX_TARGETS
from store.api.schemas.common import (
    EXAMPLE_TIME,
    StrictBody,
    Timestamp,
    entity_config,
    list_example,
)
from store.api.schemas.text import SafeText
from store.fleet_routing import alias_out
from store.models import Alias, AliasRevision

AD_1 = "ad_5f0c2b6e9d4a4e1f8c3b7a2d1e0f9a8b"
AD_2 = "ad_0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b"


class AliasTargetIn(StrictBody):
    version: str = Field(max_length=VERSION_MAX_LENGTH, description="a ready version")
    weight: int = Field(default=100, ge=1, le=100, description="share of requests, percent")


class AliasPut(StrictBody):
    """Where the alias routes: 1 to 8 distinct ready versions of the adapter, one base model,
    weights summing to 100. ``pinned`` keeps every target resident on the engines."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "targets": [
                        {"version": "1.2.0", "weight": 90},
                        {"version": "1.3.0", "weight": 10},
                    ],
                    "pinned": False,
                }
            ]
        },
    )

    targets: list[AliasTargetIn] = Field(min_length=1, max_length=MAX_TARGETS)
    pinned: bool = False
    reason: SafeText | None = None


class AliasTargetOut(Body):
    version: str
    adapter_id: str
    weight: int


ALIAS_EXAMPLE: dict[str, Any] = {
    "object": "alias",
    "namespace": "acme",
    "name": "support-bot",
    "alias": "stable",
    "coordinates": "acme/support-bot@stable",
    "base_model": "meta/llama-3-8b",
    "revision": 3,
    "generation": 42,
    "implicit": False,
    "pinned": False,
    "targets": [
        {"version": "1.2.0", "adapter_id": AD_1, "weight": 90},
        {"version": "1.3.0", "adapter_id": AD_2, "weight": 10},
    ],
    "updated_at": EXAMPLE_TIME,
    "updated_by": "token:release@acme",
}


class AliasOut(Body):
    """An alias; ``implicit`` (revision 0) for ``latest``, the highest ready version."""

    model_config = entity_config(ALIAS_EXAMPLE)

    object: Literal["alias"] = "alias"
    namespace: str
    name: str
    alias: str
    coordinates: str
    base_model: str
    revision: int
    generation: int
    implicit: bool
    pinned: bool
    targets: list[AliasTargetOut]
    updated_at: Timestamp | None = None
    updated_by: str | None = None


class AliasList(Body):
    model_config = entity_config(list_example(ALIAS_EXAMPLE))

    object: Literal["list"] = "list"
    data: list[AliasOut]


class AliasDeleted(Body):
    model_config = entity_config(
        {"object": "alias", "coordinates": "acme/support-bot@canary", "deleted": True}
    )

    object: Literal["alias"] = "alias"
    coordinates: str
    deleted: Literal[True] = True


class AliasRevisionOut(Body):
    revision: int
    action: Literal["set", "drop", "delete"]
    targets: list[AliasTargetOut] | None
    pinned: bool
    actor: str
    reason: str | None = None
    generation: int
    at: Timestamp


class AliasHistory(Body):
    """Every revision of an alias, oldest first (a deleted alias's too)."""

    model_config = entity_config(
        {
            "object": "alias_history",
            "coordinates": "acme/support-bot@stable",
            "data": [
                {
                    "revision": 1,
                    "action": "set",
                    "targets": [{"version": "1.2.0", "adapter_id": AD_1, "weight": 100}],
                    "pinned": False,
                    "actor": "token:release@acme",
                    "reason": None,
                    "generation": 40,
                    "at": EXAMPLE_TIME,
                }
            ],
        }
    )

    object: Literal["alias_history"] = "alias_history"
    coordinates: str
    data: list[AliasRevisionOut]


def alias_entity(row: Alias) -> dict[str, Any]:
    """An alias as the API answers it."""
    return {
        "object": "alias",
        **alias_out(row),
        "updated_at": row.updated_at.isoformat(),
        "updated_by": row.updated_by,
    }


def history_entity(coordinates: str, rows: list[AliasRevision]) -> dict[str, Any]:
    """An alias's revisions as the API answers them."""
    return {
        "object": "alias_history",
        "coordinates": coordinates,
        "data": [
            {
                "revision": r.revision,
                "action": r.action,
                "targets": r.targets,
                "pinned": r.pinned,
                "actor": r.actor,
                "reason": r.reason,
                "generation": r.generation,
                "at": r.at.isoformat(),
            }
            for r in rows
        ],
    }
