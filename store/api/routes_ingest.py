"""Ingest records: what became of each trainer announcement (``received`` → ``enqueued`` →
``done`` | ``failed``), looked up by ``event_id`` or by ``job_id``.

Tenancy follows the registry's rule: an event belongs to the namespace it announced; a
caller who may not read that namespace gets the same 404 as for an event that does not
exist, so no tenant learns of another's jobs.
"""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Path, Query
from sqlmodel import Session

from store.api.deps import Caller, State
from store.api.errors import error_responses
from store.api.schemas.common import page_of
from store.api.schemas.ops import IngestList, IngestRecordOut
from store.auth import Principal
from store.db import session_scope
from store.errors import NotFound
from store.models import IngestRecord

router = APIRouter(prefix="/v1/ingest", responses=error_responses(401))
MAX_PER_JOB = 100
_EXAMPLE = {
    "object": "ingest_record",
    "event_id": "0b9f6c2d5e8a4f7b9c1d2e3f4a5b6c7d",
    "job_id": "job-42",
    "namespace": "ghost",
    "output_model": "ghost/support-bot@1.0.0",
    "base_model": "tiny-llama",
    "status": "failed",
    "adapter_id": None,
    "error": {"code": "namespace_not_found", "message": "namespace 'ghost' not found"},
    "received_at": "2026-11-23T10:00:00Z",
    "updated_at": "2026-11-23T10:00:01Z",
}
_LIST_EXAMPLE = page_of([_EXAMPLE], page=1, page_size=1, total=1)


def _namespace_of(record: IngestRecord) -> str | None:
    value = (record.payload or {}).get("namespace")
    return value if isinstance(value, str) else None


def _readable(caller: Principal, record: IngestRecord) -> bool:
    """Whether ``caller`` may see ``record``: read access to its namespace (a record
    without one is visible to global tokens only)."""
    namespace = _namespace_of(record)
    if namespace is None:
        return caller.namespace is None
    return caller.can_read(namespace)


def ingest_out(record: IngestRecord) -> dict[str, Any]:
    """The API shape of an ingest record; ``error`` is set exactly when it ``failed``."""
    payload = record.payload or {}
    stamps = record.model_dump(mode="json", include={"received_at", "updated_at"})
    failed = record.status == "failed"
    return {
        "object": "ingest_record",
        "event_id": record.event_id,
        "job_id": record.job_id,
        "namespace": _namespace_of(record),
        "output_model": payload.get("output_model"),
        "base_model": payload.get("base_model"),
        "status": record.status,
        "adapter_id": record.adapter_id,
        "error": (
            {"code": record.error_code or "failed", "message": record.error_message or ""}
            if failed
            else None
        ),
        "received_at": stamps["received_at"],
        "updated_at": stamps["updated_at"],
    }


def _visible(session: Session, caller: Principal, event_id: str) -> IngestRecord:
    """The record of ``event_id`` if it exists and the caller may read it; one identical
    ``NotFound`` otherwise."""
    record = session.get(IngestRecord, event_id)
    if record is None or not _readable(caller, record):
        raise NotFound(f"ingest event {event_id!r} not found")
    return record


@router.get(
    "",
    response_model=IngestList,
    responses={
        200: {"content": {"application/json": {"example": _LIST_EXAMPLE}}},
        **error_responses(400),
    },
)
def list_ingest(
    caller: Caller,
    state: State,
    job_id: Annotated[str, Query(min_length=1, max_length=256)],
) -> dict[str, Any]:
    """The ingest records of training job ``job_id`` that the caller may read, newest
    first (a job announced more than once has several; at most 100). An empty list when
    there are none."""
    with session_scope(state.engine) as session:
        rows = session.execute(
            sa.select(IngestRecord)
            .where(IngestRecord.job_id == job_id)
            .order_by(IngestRecord.received_at.desc())
            .limit(MAX_PER_JOB)
        ).scalars()
        data = [ingest_out(r) for r in rows if _readable(caller, r)]
    return page_of(data, page=1, page_size=max(len(data), 1), total=len(data))


@router.get(
    "/{event_id}",
    response_model=IngestRecordOut,
    responses={
        200: {"content": {"application/json": {"example": _EXAMPLE}}},
        **error_responses(400, 404),
    },
)
def get_ingest(
    event_id: Annotated[str, Path(min_length=1, max_length=128)], caller: Caller, state: State
) -> dict[str, Any]:
    """What became of announcement ``event_id``: its status, the adapter it registered
    (``done``) or the error code and message it failed with (``failed``). 404 when there is
    no such event or the caller may not read its namespace."""
    with session_scope(state.engine) as session:
        return ingest_out(_visible(session, caller, event_id))
