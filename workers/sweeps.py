"""Periodic sweeps: re-drive stuck ingest work and fail versions stuck mid-registration.

Every re-drive is bounded: an ingest record re-enqueued ``MAX_RECLAIMS`` times is marked
``failed`` (``retries_exhausted``) instead of going round forever.

An ``enqueued`` record is stuck only when its task message is gone. While the ingest queue
still holds messages, its message may be one of them, merely waiting behind the backlog, so
the sweep leaves ``enqueued`` records alone until the queue has drained: re-enqueueing
waiting work only lengthens the queue it waits in (each copy is another message), and
giving up on it marked records ``failed`` whose work was still queued and then registered.
"""

from __future__ import annotations

import sqlalchemy as sa
import structlog
from celery import Celery
from kombu.exceptions import ChannelError

from events import streams
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
    backlog = ingest_backlog(celery_app)
    with rt.session() as session:
        records = ingest.stuck_records(
            session,
            received_before=ingest.cutoff(s.stuck_received_s),
            # A queued message is late, not lost: judge enqueued records once none waits.
            enqueued_before=None if backlog else ingest.cutoff(s.stuck_enqueued_s),
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
        log.info("reclaim_sweep", backlog=backlog, **counts)
    return counts


def ingest_backlog(celery_app: Celery) -> int:
    """How many messages wait in the ingest queue (every priority), not yet taken by a
    worker."""
    with celery_app.connection_for_read() as conn:
        try:
            declared = conn.default_channel.queue_declare(streams.INGEST_QUEUE, passive=True)
        except ChannelError:  # no such queue: nothing ever waited in it, or it drained
            return 0
        return int(declared.message_count)
