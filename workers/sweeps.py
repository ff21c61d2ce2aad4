"""Periodic sweeps: re-drive stuck ingest work and fail versions stuck mid-registration.

Every re-drive is bounded: an ingest record re-enqueued ``MAX_RECLAIMS`` times is marked
``failed`` (``retries_exhausted``) instead of going round forever.
"""

from __future__ import annotations

import sqlalchemy as sa
import structlog
from celery import Celery

from store import registry
from store.approval import Status
from store.errors import IllegalTransition, LorafleetError
from store.models import AdapterVersion
from workers import ingest
from workers.celery_app import ingest_chain
from workers.runtime import Runtime

log = structlog.get_logger(__name__)

MAX_RECLAIMS = 3
ACTOR = "lorafleet-sweeper"


def reclaim_stuck(rt: Runtime, celery_app: Celery) -> dict[str, int]:
    """One sweep; returns counts of ``requeued`` and ``failed`` ingest records and
    ``versions_failed``. Safe to run concurrently (rows are claimed with SKIP LOCKED) and
    harmless when it races a slow task (every step is idempotent)."""
    counts = {"requeued": 0, "failed": 0, "versions_failed": 0}
    s = rt.settings
    with rt.session() as session:
        records = ingest.stuck_records(
            session,
            received_before=ingest.cutoff(s.stuck_received_s),
            enqueued_before=ingest.cutoff(s.stuck_enqueued_s),
        )
        for record in records:
            if ingest.reclaims_of(record) >= MAX_RECLAIMS:
                ingest.set_status(
                    session,
                    record.event_id,
                    ingest.State.FAILED,
                    error_code="retries_exhausted",
                    error_message=f"re-enqueued {MAX_RECLAIMS} times without finishing",
                )
                counts["failed"] += 1
                continue
            event = ingest.event_of(record)
            # Enqueue before counting: a crash in between re-enqueues once more (harmless).
            ingest_chain(celery_app, event).apply_async()
            ingest.note_reclaimed(session, record)
            counts["requeued"] += 1
            log.warning(
                "ingest_requeued", event_id=record.event_id, job_id=record.job_id, was=record.status
            )
    with rt.session() as session:
        stuck = session.execute(
            sa.select(AdapterVersion.id)
            .where(AdapterVersion.status == Status.VALIDATING.value)
            .where(AdapterVersion.updated_at < ingest.cutoff(s.stuck_version_s))
            .limit(100)
        ).scalars()
        ids = list(stuck)
    for adapter_id in ids:
        try:
            with rt.session() as session:
                registry.transition(
                    session,
                    adapter_id,
                    Status.FAILED.value,
                    actor=ACTOR,
                    reason=f"stuck in validating for over {s.stuck_version_s}s",
                )
            counts["versions_failed"] += 1
        except (IllegalTransition, LorafleetError) as exc:  # moved on meanwhile: fine
            log.info("stuck_version_moved", adapter_id=adapter_id, reason=str(exc))
    if any(counts.values()):
        log.info("reclaim_sweep", **counts)
    return counts
