"""Every Redis stream name, consumer group and key pattern lorafleet uses. No Redis key is
spelled anywhere else."""

from __future__ import annotations

PREFIX = "lorafleet"

# Customizer (or any trainer) -> ingest bridge.
JOBS_STREAM = f"{PREFIX}:customizer:jobs"
INGEST_GROUP = "lorafleet-ingest"
JOBS_DLQ_STREAM = f"{PREFIX}:customizer:dlq"

# Registry -> every engine (XREAD, no consumer group).
REFRESH_STREAM = f"{PREFIX}:fleet:refresh"

# Status changes, for dashboards and tests that watch the pipeline.
STATUS_STREAM = f"{PREFIX}:adapters:status"

# Approximate cap on stream lengths (XADD MAXLEN ~).
STREAM_MAXLEN = 100_000


def engine_cursor_key(engine_id: str) -> str:
    """Where an engine may remember the last refresh entry it applied."""
    return f"{PREFIX}:engine:{engine_id}:cursor"
