"""Every Redis stream name, consumer group and key pattern lorafleet uses, and the Redis
URL everything defaults to. No Redis key is spelled anywhere else."""

from __future__ import annotations

# Where every component (and the events-only tools) look for Redis when not told.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

PREFIX = "lorafleet"

# Customizer (or any trainer) -> ingest bridge.
JOBS_STREAM = f"{PREFIX}:customizer:jobs"
INGEST_GROUP = "lorafleet-ingest"
JOBS_DLQ_STREAM = f"{PREFIX}:customizer:dlq"

# Registry -> every engine (XREAD, no consumer group).
REFRESH_STREAM = f"{PREFIX}:fleet:refresh"

# Status changes, for dashboards and tests that watch the pipeline.
STATUS_STREAM = f"{PREFIX}:adapters:status"

# Registry -> every engine: revoked tokens (``events.revocations``), XREAD, no consumer group.
REVOCATIONS_STREAM = f"{PREFIX}:auth:revocations"

# Engines -> the usage fold (``events.usage``): counts per token/adapter, consumer group.
USAGE_STREAM = f"{PREFIX}:usage"
USAGE_GROUP = "lorafleet-usage"

# Engine heartbeats (``events.heartbeat``): one key per live engine, expiring after its TTL.
ENGINE_HEARTBEAT_PREFIX = f"{PREFIX}:fleet:engine:"

# Approximate cap on stream lengths (XADD MAXLEN ~).
STREAM_MAXLEN = 100_000


# Celery queues (Redis lists of the broker): ingest chain, fleet broadcasts, periodic sweeps.
INGEST_QUEUE = "ingest"
FLEET_QUEUE = "fleet"
MAINTENANCE_QUEUE = "maintenance"
QUEUES = (INGEST_QUEUE, FLEET_QUEUE, MAINTENANCE_QUEUE)  # what a worker consumes by default
# The evaluation gate (issue 17): consumed only by workers that hold base models
# (``lorafleet worker -Q evaluate`` with LORAFLEET_EVAL_MODELS), never by default.
EVAL_QUEUE = "evaluate"

# Held by whoever is publishing outbox rows, so concurrent relays do not double-publish.
RELAY_LOCK_KEY = f"{PREFIX}:outbox:relay-lock"
# Set by whoever committed outbox rows and wants them sent now; the lock holder re-reads
# the table before releasing while it is set (workers/relay.py), so nobody waits for the lock.
RELAY_KICK_KEY = f"{PREFIX}:outbox:relay-kick"
# Per-event stage timings, written only when LORAFLEET_STAGE_TRACE is on (bench/pipeline.py).
STAGE_TRACE_STREAM = f"{PREFIX}:bench:stages"

# Fields of a stream entry besides ``event`` (the event JSON).
OUTBOX_ID_FIELD = "outbox_id"  # refresh entries: the outbox row id, for consumer dedup
DLQ_REASON_FIELD = "dlq_reason"  # DLQ entries: why the entry was dead-lettered
DLQ_SOURCE_ID_FIELD = "dlq_source_id"  # DLQ entries: the original entry id on the jobs stream
DLQ_SOURCE_STREAM_FIELD = "dlq_source_stream"
DLQ_DELIVERIES_FIELD = "dlq_deliveries"
DLQ_AT_FIELD = "dlq_at"
DLQ_FIELDS = (
    DLQ_REASON_FIELD,
    DLQ_SOURCE_ID_FIELD,
    DLQ_SOURCE_STREAM_FIELD,
    DLQ_DELIVERIES_FIELD,
    DLQ_AT_FIELD,
)
