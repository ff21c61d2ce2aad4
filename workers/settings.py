"""Worker settings (``LORAFLEET_*``), read once per process: the pipeline's knobs.

Connection settings (database, Redis, blobs, S3) are the registry's ``StoreSettings``; this
adds what only the pipeline needs: artifact fetching limits, bridge reclaim timings, retry
bounds and sweep intervals.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from store.settings import StoreSettings


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAFLEET_", extra="ignore")

    # Artifact fetching.
    artifact_roots: str | None = Field(
        default=None,
        description="Directories file:// artifacts may come from, separated by ':' or ','; "
        "default <home>/artifacts.",
    )
    artifact_allow_private_hosts: bool = Field(
        default=False, description="Allow http(s) artifacts on loopback/private/link-local hosts."
    )
    artifact_allowed_hosts: str = Field(
        default="",
        description="Host names (or literal addresses) of http(s) artifact servers exempt from "
        "the private-address check, separated by ','; every other host, redirect targets "
        "included, is still checked.",
    )
    artifact_max_redirects: int = 5
    artifact_max_files: int = 10_000
    artifact_max_bytes: int = 8 * 1024**3
    artifact_http_timeout: float = 60.0

    # Ingest bridge.
    bridge_consumer: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    bridge_batch: int = 16
    bridge_block_ms: int = 1000
    # Must exceed the slowest normal handling of one entry (decode + insert + enqueue), or a
    # live consumer's entry is stolen and handled twice (harmless, but wasted work).
    bridge_claim_min_idle_ms: int = 60_000
    bridge_claim_interval_s: float = 5.0
    bridge_max_deliveries: int = 5

    # Celery.
    task_max_retries: int = 8
    task_retry_backoff_max: int = 300
    task_soft_time_limit: int = 1500
    task_time_limit: int = 1800
    # Longer than the longest task (time limit + the longest retry countdown), or Redis
    # redelivers a message that a live worker is still running.
    broker_visibility_timeout: int = 2400
    # Worker liveness (workers/liveness.py): each node beats this often; one silent for
    # ``worker_dead_after_s`` is dead, and the messages it held go back to their queues at
    # once (not after the visibility timeout).
    worker_heartbeat_s: float = 5.0
    worker_dead_after_s: float = 15.0
    result_expires: int = 3600
    # Write per-event stage timings to a Redis stream (workers/stages.py); for the bench.
    stage_trace: bool = False

    # Beat.
    relay_interval_s: float = 2.0
    relay_batch: int = 500
    reclaim_interval_s: float = 60.0
    # Ingest records not progressing for this long are re-enqueued (tasks touch them).
    stuck_received_s: int = 120
    # Judged only while no message waits in the ingest queue (one waiting there is late, not
    # lost); this bounds how long a task message lost with a crashed Redis delays its adapter.
    stuck_enqueued_s: int = 900
    # Versions left in uploading/validating this long are failed (``stuck``).
    stuck_version_s: int = 3600
    blob_gc_interval_s: float = 3600.0

    def store(self) -> StoreSettings:
        """The registry settings of this process."""
        from store.settings import get_settings

        return get_settings()

    def resolved_redis_url(self) -> str:
        """The Redis of this process (``StoreSettings.resolved_redis_url``)."""
        return self.store().resolved_redis_url()

    def allowed_roots(self) -> list[Path]:
        """The resolved directories ``file://`` artifacts must lie under."""
        if self.artifact_roots:
            parts = [p for chunk in self.artifact_roots.split(",") for p in chunk.split(":")]
            return [Path(p).expanduser().resolve() for p in parts if p.strip()]
        return [(self.store().home / "artifacts").resolve()]


@lru_cache(maxsize=1)
def get_worker_settings() -> WorkerSettings:
    """The process-wide worker settings (cached; tests build their own)."""
    return WorkerSettings()
