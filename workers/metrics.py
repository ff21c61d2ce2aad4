"""Prometheus metrics of the pipeline's processes (``lorafleet bridge | worker | beat``),
served by prometheus_client's HTTP server when ``--metrics-port`` / ``LORAFLEET_METRICS_PORT``
is given (one port per process).

Two kinds of numbers, two designs:

* **Pipeline state** (DLQ depth, unsent outbox rows, the age of the oldest) is read from
  Redis and the database when Prometheus scrapes (``PipelineCollector``), so it is right
  whichever process wrote it; bridge, worker and beat all expose it (the same values:
  aggregate with ``max``, not ``sum``).
* **Ingest latency** (an event's ``occurred_at`` to its ingest record ``done`` or
  ``failed``) is observed where an ingest ends: in a Celery worker's pool processes, from
  the ``task_success`` / ``task_failure`` signals. The worker therefore runs
  prometheus_client's multiprocess mode (a fresh ``PROMETHEUS_MULTIPROC_DIR`` per start,
  set before prometheus_client is first imported, so the forked children write their
  samples there) and its parent serves the aggregate. Only the worker exposes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog

from events import streams
from events.models import JobCompleted
from store.models import OutboxRow
from workers.runtime import Runtime

log = structlog.get_logger(__name__)

INGEST_LATENCY = "lorafleet_ingest_latency_seconds"
INGEST_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# The ingest task and the steps of the older chain (task name suffixes).
INGEST_TASKS = ("ingest", "package", "validate", "register")


class PipelineCollector:
    """DLQ depth and outbox lag, read from Redis and the database at scrape time. A store
    that is down leaves its families out of that scrape instead of failing it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            depth = self.runtime.redis.xlen(streams.JOBS_DLQ_STREAM)
        except Exception as exc:  # noqa: BLE001 - a scrape must survive a Redis blink
            log.warning("metrics.redis_unavailable", error=str(exc))
        else:
            yield GaugeMetricFamily(
                "lorafleet_dlq_depth", "Entries in the ingest dead-letter stream.", value=depth
            )
        try:
            pending, oldest = self._outbox()
        except Exception as exc:  # noqa: BLE001 - likewise for the database
            log.warning("metrics.database_unavailable", error=str(exc))
            return
        yield GaugeMetricFamily(
            "lorafleet_outbox_pending", "Outbox rows not yet relayed.", value=pending
        )
        age = (datetime.now(UTC) - _aware(oldest)).total_seconds() if oldest else 0.0
        yield GaugeMetricFamily(
            "lorafleet_outbox_oldest_pending_age_seconds",
            "Age of the oldest outbox row not yet relayed (0 when none).",
            value=max(age, 0.0),
        )

    def _outbox(self) -> tuple[int, datetime | None]:
        unsent = OutboxRow.sent_at.is_(None)  # type: ignore[union-attr]
        query = sa.select(sa.func.count(), sa.func.min(OutboxRow.created_at)).where(unsent)
        with self.runtime.engine.connect() as conn:
            count, oldest = conn.execute(query).one()
        return int(count), oldest


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)  # SQLite hands back naive UTC


def ingest_latency() -> Any:
    """The ingest latency histogram (created once per process, on first use)."""
    global _latency
    if _latency is None:
        from prometheus_client import Histogram

        _latency = Histogram(
            INGEST_LATENCY,
            "Seconds from a JobCompleted event's occurred_at to its ingest ending.",
            ["outcome"],
            buckets=INGEST_BUCKETS,
        )
    return _latency


_latency: Any = None


def _observe(ctx: Any, outcome: str) -> None:
    if not (isinstance(ctx, dict) and isinstance(ctx.get("event"), dict)):
        return
    try:
        event = JobCompleted.model_validate(ctx["event"])
    except ValueError:
        return
    seconds = (datetime.now(UTC) - _aware(event.occurred_at)).total_seconds()
    ingest_latency().labels(outcome).observe(max(seconds, 0.0))


def _on_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    if getattr(sender, "name", "").endswith((".ingest", ".register")):
        _observe(result, "done")


def _on_failure(sender: Any = None, args: Any = None, **_: Any) -> None:
    if getattr(sender, "name", "").rsplit(".", 1)[-1] in INGEST_TASKS and args:
        _observe(args[0], "failed")


def install_ingest_hooks() -> None:
    """Observe ingest latency from Celery's task signals (in whichever process runs the
    task: the pool's children inherit the connection across the fork)."""
    from celery import signals

    ingest_latency()
    signals.task_success.connect(_on_success, weak=False)
    signals.task_failure.connect(_on_failure, weak=False)


def serve_metrics(port: int, runtime: Runtime, *, multiprocess: bool = False) -> None:
    """Serve ``/metrics`` on ``port`` (all interfaces) from a daemon thread: the pipeline
    state, plus (``multiprocess``) the samples of every process writing to this process's
    ``PROMETHEUS_MULTIPROC_DIR``. Raises ``OSError`` when the port is taken."""
    import prometheus_client
    from prometheus_client import CollectorRegistry
    from prometheus_client import multiprocess as mp

    prometheus_client.disable_created_metrics()
    registry = CollectorRegistry()
    registry.register(PipelineCollector(runtime))  # type: ignore[arg-type]
    if multiprocess:
        mp.MultiProcessCollector(registry)
    prometheus_client.start_http_server(port, registry=registry)
    log.info("metrics_serving", port=port, multiprocess=multiprocess)
