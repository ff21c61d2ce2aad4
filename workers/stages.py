"""Where one ingest's time goes: named wall-clock spans per event, for ``bench/pipeline.py``.

Off unless ``LORAFLEET_STAGE_TRACE`` is on; then the bridge and the ingest task each write
their spans for an event as one entry of ``STAGE_TRACE_STREAM`` (``event_id`` and ``spans``,
a JSON list of ``[name, start, end]`` in Unix seconds). Off, a trace is a no-op: nothing is
timed, nothing written. A trace that cannot be written is dropped (it is a measurement, not
part of the ingest).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis
import structlog

from events import streams

log = structlog.get_logger(__name__)

TRACE_MAXLEN = 100_000


class StageTrace:
    """Spans of one event in one process; ``flush`` writes them once."""

    def __init__(self, event_id: str, *, enabled: bool) -> None:
        self.event_id = event_id
        self.enabled = enabled
        self.spans: list[tuple[str, float, float]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` (when enabled)."""
        if not self.enabled:
            yield
            return
        start = time.time()
        try:
            yield
        finally:
            self.spans.append((name, start, time.time()))

    def mark(self, name: str, start: float, end: float | None = None) -> None:
        """Record a span measured elsewhere (e.g. from the event's ``occurred_at``)."""
        if self.enabled:
            self.spans.append((name, start, time.time() if end is None else end))

    def flush(self, client: redis.Redis) -> None:
        """Write the spans to ``STAGE_TRACE_STREAM`` (no-op when disabled or empty)."""
        if not (self.enabled and self.spans):
            return
        try:
            client.xadd(
                streams.STAGE_TRACE_STREAM,
                {"event_id": self.event_id, "spans": json.dumps(self.spans)},
                maxlen=TRACE_MAXLEN,
                approximate=True,
            )
        except redis.RedisError as exc:
            log.debug("stage_trace_dropped", error=str(exc))
        self.spans = []
