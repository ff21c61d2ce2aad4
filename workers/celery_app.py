"""The Celery application: broker and results on Redis, late acks, named queues, beat.

Delivery guarantees live here, declared once: a task message is acknowledged only after the
task finished (``acks_late``), requeued if its worker process dies
(``reject_on_worker_lost``), and each worker process reserves one message at a time
(prefetch 1) so a long packaging job never holds others hostage. Redis redelivers an
unacknowledged message after ``visibility_timeout``, which is longer than any task may run.
"""

from __future__ import annotations

from celery import Celery, Signature
from kombu import Queue

from events import streams
from events.models import JobCompleted
from workers import liveness
from workers.settings import WorkerSettings, get_worker_settings

TASK_MODULE = "workers.tasks"
EVAL_MODULE = "workers.evaluate"  # the evaluate step (imports torch lazily)


def create_app(settings: WorkerSettings | None = None, *, redis_url: str | None = None) -> Celery:
    """A configured Celery app for ``settings`` (default: this process's settings), with
    broker and result backend on ``redis_url`` (default ``LORAFLEET_REDIS_URL``)."""
    settings = settings or get_worker_settings()
    redis_url = redis_url or settings.resolved_redis_url()
    app = Celery(
        "lorafleet", broker=redis_url, backend=redis_url, include=[TASK_MODULE, EVAL_MODULE]
    )
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout,
            # Later chain steps outrank new packaging work, so a burst of announcements
            # finishes adapters one by one instead of packaging all of them first.
            "priority_steps": list(range(10)),
            "sep": ":",
            "queue_order_strategy": "priority",
        },
        result_backend_transport_options={"visibility_timeout": settings.broker_visibility_timeout},
        result_expires=settings.result_expires,
        broker_connection_retry_on_startup=True,
        task_publish_retry=True,
        # A chain hands over to its next step by publishing; if Redis restarts at that
        # moment, kombu's default (3 tries in ~0.6 s) gives up and strands the event until
        # the reclaim sweep. Keep trying for about two minutes instead.
        task_publish_retry_policy={
            "max_retries": 60,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2.0,
        },
        task_queues=(
            Queue(streams.INGEST_QUEUE),
            Queue(streams.FLEET_QUEUE),
            Queue(streams.MAINTENANCE_QUEUE),
            Queue(streams.EVAL_QUEUE),
        ),
        task_default_queue=streams.INGEST_QUEUE,
        task_routes={
            f"{TASK_MODULE}.ingest": {"queue": streams.INGEST_QUEUE, "priority": 6},
            f"{TASK_MODULE}.package": {"queue": streams.INGEST_QUEUE, "priority": 6},
            f"{TASK_MODULE}.validate": {"queue": streams.INGEST_QUEUE, "priority": 3},
            f"{EVAL_MODULE}.evaluate": {"queue": streams.EVAL_QUEUE, "priority": 3},
            f"{TASK_MODULE}.register": {"queue": streams.INGEST_QUEUE, "priority": 2},
            f"{TASK_MODULE}.broadcast": {"queue": streams.FLEET_QUEUE, "priority": 1},
            f"{TASK_MODULE}.relay": {"queue": streams.FLEET_QUEUE},
            f"{TASK_MODULE}.reclaim_stuck": {"queue": streams.MAINTENANCE_QUEUE},
            f"{TASK_MODULE}.fold_usage": {"queue": streams.MAINTENANCE_QUEUE},
            f"{TASK_MODULE}.blob_gc": {"queue": streams.MAINTENANCE_QUEUE},
        },
        # Flower / `celery events` see every task from the moment it is sent.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "relay-outbox": {
                "task": f"{TASK_MODULE}.relay",
                "schedule": settings.relay_interval_s,
                # A missed tick is superseded by the next one; never let them pile up.
                "options": {"expires": max(1.0, settings.relay_interval_s * 2)},
            },
            "fold-usage": {  # engines flush every few seconds; fold at the relay's pace
                "task": f"{TASK_MODULE}.fold_usage",
                "schedule": settings.relay_interval_s,
                "options": {"expires": max(1.0, settings.relay_interval_s * 2)},
            },
            "reclaim-stuck": {
                "task": f"{TASK_MODULE}.reclaim_stuck",
                "schedule": settings.reclaim_interval_s,
                "options": {"expires": settings.reclaim_interval_s},
            },
            "blob-gc": {
                "task": f"{TASK_MODULE}.blob_gc",
                "schedule": settings.blob_gc_interval_s,
                "options": {"expires": settings.blob_gc_interval_s},
            },
        },
    )
    return app


def ingest_chain(celery_app: Celery, event: JobCompleted) -> Signature:
    """The work that turns an announcement into a registered, broadcast version: one
    ``ingest`` task (package, validate, register, relay; ``workers.tasks``), a single queue
    hop. Built from the task name, so enqueuing does not import the tasks (nor torch)."""
    ctx = {"event": event.model_dump(mode="json")}
    return celery_app.signature(f"{TASK_MODULE}.ingest", args=(ctx,))


app = create_app()
# Heartbeats and the dead-worker check of the worker nodes running this app (once per process).
liveness.install(
    app, get_worker_settings().worker_heartbeat_s, get_worker_settings().worker_dead_after_s
)
