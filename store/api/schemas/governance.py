"""Schemas of governance: the status history, the restore body and the access log."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel as Body

from store.api.schemas.common import (
    EXAMPLE_TIME,
    Pagination,
    StrictBody,
    Timestamp,
    entity_config,
    list_example,
)
from store.api.schemas.text import SafeText
from store.models import AccessLog, AdapterVersion, StatusTransition


class RestoreBody(StrictBody):
    """Why an archived version is served again (recorded in its history)."""

    reason: SafeText


HISTORY_EXAMPLE: dict[str, Any] = {
    "object": "history",
    "adapter_id": "ad_5f0c2b6e9d4a4e1f8c3b7a2d1e0f9a8b",
    "coordinates": "acme/support-bot@1.2.0",
    "uploaded_by": "token:trainer@acme",
    "uploaded_at": EXAMPLE_TIME,
    "status": "ready",
    "data": [
        {
            "from_status": "validating",
            "to_status": "pending",
            "actor": "token:trainer@acme",
            "reason": "validated",
            "generation": None,
            "at": EXAMPLE_TIME,
        },
        {
            "from_status": "pending",
            "to_status": "ready",
            "actor": "token:reviewer@acme",
            "reason": "eval loss 0.41, better than 1.1.0",
            "generation": 7,
            "at": EXAMPLE_TIME,
        },
    ],
}
AUDIT_EXAMPLE: dict[str, Any] = {
    "id": 42,
    "at": EXAMPLE_TIME,
    "actor": "token:reviewer@acme",
    "action": "adapter.ready",
    "target": "ad_5f0c2b6e9d4a4e1f8c3b7a2d1e0f9a8b",
    "namespace": "acme",
    "remote_addr": "10.0.0.7",
    "outcome": "ok",
}


class TransitionOut(Body):
    from_status: str | None
    to_status: str
    actor: str
    reason: str | None = None
    generation: int | None = None
    at: Timestamp


class HistoryOut(Body):
    """Every step a version took through the status machine, oldest first."""

    model_config = entity_config(HISTORY_EXAMPLE)

    object: Literal["history"] = "history"
    adapter_id: str
    coordinates: str
    uploaded_by: str
    uploaded_at: Timestamp
    status: str
    data: list[TransitionOut]


class AuditEntryOut(Body):
    id: int
    at: Timestamp
    actor: str
    action: str
    target: str | None = None
    namespace: str | None = None
    remote_addr: str | None = None
    outcome: str


class AuditList(Body):
    model_config = entity_config(list_example(AUDIT_EXAMPLE))

    object: Literal["list"] = "list"
    data: list[AuditEntryOut]
    pagination: Pagination


def history_out(version: AdapterVersion, steps: list[StatusTransition]) -> dict[str, Any]:
    return {
        "object": "history",
        "adapter_id": version.id,
        "coordinates": version.coordinates,
        "uploaded_by": version.created_by,
        "uploaded_at": version.created_at.isoformat(),
        "status": version.status,
        "data": [
            {
                "from_status": s.from_status,
                "to_status": s.to_status,
                "actor": s.actor,
                "reason": s.reason,
                "generation": s.generation,
                "at": s.at.isoformat(),
            }
            for s in steps
        ],
    }


def audit_out(row: AccessLog) -> dict[str, Any]:
    return row.model_dump(mode="json")
