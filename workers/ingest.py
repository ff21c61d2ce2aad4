"""The ingest record of each trainer announcement: the bridge's dedup key and the
pipeline's progress (``received`` → ``enqueued`` → ``done`` | ``failed``).

Every update is a single statement keyed by ``event_id``; ``updated_at`` is touched at each
pipeline step so the reclaim sweep can tell stuck work from slow work.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from events.models import JobCompleted
from store.models import IngestRecord, utcnow


class State(StrEnum):
    """Where an announcement is: ``received`` (recorded by the bridge), ``enqueued`` (its
    chain sent to Celery), then ``done`` (version registered) or ``failed``."""

    RECEIVED = "received"
    ENQUEUED = "enqueued"
    DONE = "done"
    FAILED = "failed"


NOT_DONE = (State.RECEIVED, State.ENQUEUED, State.FAILED)  # a final failure may overwrite these
RECLAIMS_KEY = "_reclaims"  # stored next to the event in ``payload``; not part of the event


def record_received(session: Session, event: JobCompleted) -> tuple[IngestRecord, bool]:
    """Insert the record for ``event`` unless one exists; returns (record, inserted).

    ``INSERT ... ON CONFLICT DO NOTHING`` keeps concurrent bridge replicas from both
    inserting: exactly one sees ``inserted=True`` for an ``event_id``.
    """
    values = {
        "event_id": event.event_id,
        "job_id": event.job_id,
        "status": State.RECEIVED,
        "received_at": utcnow(),
        "updated_at": utcnow(),
        "payload": event.model_dump(mode="json"),
    }
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(IngestRecord).values(**values).on_conflict_do_nothing(index_elements=["event_id"])
    inserted = session.execute(stmt).rowcount == 1
    record = session.get(IngestRecord, event.event_id, populate_existing=True)
    assert record is not None  # just inserted or already there
    return record, inserted


def set_status(
    session: Session,
    event_id: str,
    status: str,
    *,
    only_from: tuple[str, ...] | None = None,
    adapter_id: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Move the record to ``status`` (if currently in ``only_from``, when given); returns
    whether a row changed. ``done`` and ``failed`` clear/set the error fields."""
    values: dict[str, Any] = {"status": status, "updated_at": utcnow()}
    if adapter_id is not None:
        values["adapter_id"] = adapter_id
    if status in (State.DONE, State.FAILED):
        values["error_code"] = error_code
        values["error_message"] = error_message
    stmt = sa.update(IngestRecord).where(IngestRecord.event_id == event_id)
    if only_from is not None:
        stmt = stmt.where(IngestRecord.status.in_(only_from))
    return session.execute(stmt.values(**values)).rowcount == 1


def status_of(session: Session, event_id: str) -> str | None:
    """The record's current status; None when there is no record of ``event_id``."""
    return session.execute(
        sa.select(IngestRecord.status).where(IngestRecord.event_id == event_id)
    ).scalar_one_or_none()


def touch(session: Session, event_id: str) -> None:
    """Note progress on an in-flight record (the reclaim sweep measures from here)."""
    session.execute(
        sa.update(IngestRecord)
        .where(
            IngestRecord.event_id == event_id,
            IngestRecord.status.in_((State.RECEIVED, State.ENQUEUED)),
        )
        .values(updated_at=utcnow())
    )


def stuck_records(
    session: Session,
    *,
    received_before: datetime,
    enqueued_before: datetime | None,
    limit: int = 100,
) -> list[IngestRecord]:
    """Records that stopped progressing: ``received`` (bridge died before enqueueing) or
    ``enqueued`` (task message lost) for longer than the given cut-offs; no ``enqueued`` ones
    when ``enqueued_before`` is None."""
    last = sa.func.coalesce(IngestRecord.updated_at, IngestRecord.received_at)
    stuck = [sa.and_(IngestRecord.status == State.RECEIVED, last < received_before)]
    if enqueued_before is not None:
        stuck.append(sa.and_(IngestRecord.status == State.ENQUEUED, last < enqueued_before))
    return list(
        session.execute(
            sa.select(IngestRecord)
            .where(sa.or_(*stuck))
            .order_by(IngestRecord.received_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )


def event_of(record: IngestRecord) -> JobCompleted:
    """The announcement a record was made from."""
    payload = {k: v for k, v in (record.payload or {}).items() if k != RECLAIMS_KEY}
    return JobCompleted.model_validate(payload)


def same_announcement(record: IngestRecord, event: JobCompleted) -> bool:
    """Whether ``event`` announces what ``record`` was made from: the same payload but for
    ``occurred_at`` (a trainer retrying may stamp its retry). A reused ``event_id`` with
    another payload is not a duplicate: the bridge dead-letters it (``event_id_conflict``)."""
    stored = {
        k: v for k, v in (record.payload or {}).items() if k not in (RECLAIMS_KEY, "occurred_at")
    }
    fresh = event.model_dump(mode="json")
    fresh.pop("occurred_at", None)
    return stored == fresh


def reclaims_of(record: IngestRecord) -> int:
    return int((record.payload or {}).get(RECLAIMS_KEY, 0))


def note_reclaimed(session: Session, record: IngestRecord) -> int:
    """Count one more re-enqueue of ``record`` and return the new count."""
    count = reclaims_of(record) + 1
    session.execute(
        sa.update(IngestRecord)
        .where(IngestRecord.event_id == record.event_id)
        .values(
            payload={**(record.payload or {}), RECLAIMS_KEY: count},
            status=State.ENQUEUED,
            updated_at=utcnow(),
        )
    )
    return count


def cutoff(seconds: float) -> datetime:
    """``now - seconds``."""
    return utcnow() - timedelta(seconds=seconds)
