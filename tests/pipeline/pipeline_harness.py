"""The handle tests get on a running pipeline (see ``conftest.py``), and the helpers to
drive and observe it."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from celery import Celery
from sqlmodel import Session

BASE_MODEL = "tiny-llama"


@dataclass
class Pipeline:
    """Handles on a running pipeline, and helpers to drive and observe it."""

    db_url: str
    redis_url: str
    artifacts: Path
    blob_dir: Path
    engine: sa.Engine
    redis: redis.Redis
    celery: Celery
    worker_log: Path
    bridge: Any

    def session(self) -> AbstractContextManager[Session]:
        """One unit of work (``store.db.session_scope``): commits unless the block raises."""
        from store.db import session_scope

        return session_scope(self.engine)

    def wait_ingest(self, event_id: str, timeout: float = 90.0) -> Any:
        """The ingest record of ``event_id`` once it is ``done`` or ``failed``."""
        from store.models import IngestRecord

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.session() as s:
                record = s.get(IngestRecord, event_id)
                if record is not None and record.status in ("done", "failed"):
                    return record
            time.sleep(0.1)
        raise AssertionError(
            f"ingest {event_id} did not finish in {timeout}s; worker log tail:\n"
            + self.worker_log.read_text()[-4000:]
        )

    def refresh_entries(self, adapter_id: str | None = None) -> list[tuple[str, dict[str, str]]]:
        """Entries on the fleet refresh stream (for ``adapter_id`` only, when given)."""
        import json

        from events import streams

        out = []
        for entry_id, fields in self.redis.xrange(streams.REFRESH_STREAM):
            f = {k.decode(): v.decode() for k, v in fields.items()}
            if adapter_id is None or json.loads(f["event"])["adapter_id"] == adapter_id:
                out.append((entry_id.decode(), f))
        return out

    def run_task(self, name: str, timeout: float = 30.0) -> Any:
        """Run a task on the worker and return its result."""
        return self.celery.send_task(name).get(timeout=timeout)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"condition not met in {timeout}s")
