"""A lorafleet pipeline as deployed, for fault injection: Celery workers, ingest bridges and
beat as real processes wired only by ``LORAFLEET_*`` variables, over a fresh PostgreSQL
database, a Redis and a blob store; plus announcing events and waiting for quiescence."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from pathlib import Path

import redis
import sqlalchemy as sa
from checker import Report, check, settled
from harness import AUTO_NS, BASE_MODEL, CELERY_APP, MANUAL_NS, Announced
from support.processes import (
    BRIDGE_READY,
    WORKER_READY,
    Proc,
    beat_argv,
    bridge_argv,
    process_env,
    wait_for,
    worker_argv,
)

from events import streams
from events.models import JobCompleted
from events.publisher import publish

# Timings shrunk from production so that faults resolve in seconds, in the same proportions:
# an idle entry is reclaimed after 4 s (prod 60 s) and dead-lettered after 8 deliveries, so
# an outage of ~30 s is absorbed; a task retries transient faults for ~40 s at most.
FAST_ENV = {
    "LORAFLEET_BRIDGE_CLAIM_MIN_IDLE_MS": "4000",
    "LORAFLEET_BRIDGE_CLAIM_INTERVAL_S": "1",
    "LORAFLEET_BRIDGE_BLOCK_MS": "500",
    "LORAFLEET_BRIDGE_MAX_DELIVERIES": "8",
    "LORAFLEET_TASK_MAX_RETRIES": "20",
    "LORAFLEET_TASK_RETRY_BACKOFF_MAX": "4",
    # Unacknowledged task messages of a dead worker come back after this (prod 2400 s).
    "LORAFLEET_BROKER_VISIBILITY_TIMEOUT": "10",
    # A node silent this long is dead and its messages go back at once (prod 5 s / 15 s).
    "LORAFLEET_WORKER_HEARTBEAT_S": "1",
    "LORAFLEET_WORKER_DEAD_AFTER_S": "4",
    "LORAFLEET_RELAY_INTERVAL_S": "1",
    "LORAFLEET_RECLAIM_INTERVAL_S": "5",
    "LORAFLEET_STUCK_RECEIVED_S": "15",
    # A task message Redis loses in a crash (kombu pops it, then records it as unacked:
    # not atomic) leaves its ingest record `enqueued`; the sweep re-drives it after this
    # (prod 900 s).
    "LORAFLEET_STUCK_ENQUEUED_S": "30",
    "LORAFLEET_LOG_FORMAT": "json",
    "LORAFLEET_LOG_LEVEL": "INFO",
}


TASK_RECEIVED = re.compile(r"Task workers\.tasks\.\w+\[([0-9a-f-]{36})\] received")


def event_count(default: int = 200) -> int:
    """How many announcements a chaos test sends (``LORAFLEET_CHAOS_EVENTS``)."""
    return int(os.environ.get("LORAFLEET_CHAOS_EVENTS", default))


class Cluster:
    """The pipeline's processes and the handles the checker needs."""

    def __init__(
        self,
        root: Path,
        *,
        db_url: str,
        redis_url: str,
        blob_url: str,
        artifacts: dict[str, Path],
        worker_db_url: str | None = None,
        extra_env: dict[str, str] | None = None,
        fast: bool = True,
    ) -> None:
        from store.blobs import open_blob_store
        from store.db import make_engine
        from store.settings import StoreSettings

        self.root, self.db_url, self.redis_url, self.blob_url = root, db_url, redis_url, blob_url
        self.artifacts = artifacts
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # ``fast=False``: the shipped defaults (only the log format of FAST_ENV is kept).
        timings = FAST_ENV if fast else {k: v for k, v in FAST_ENV.items() if "_LOG_" in k}
        self.env = process_env(
            {
                **timings,
                "LORAFLEET_DATABASE_URL": worker_db_url or db_url,
                "LORAFLEET_REDIS_URL": redis_url,
                "LORAFLEET_BLOB_URL": blob_url,
                "LORAFLEET_HOME": str(root / "home"),
                "LORAFLEET_ARTIFACT_ROOTS": str(artifacts["root"]),
                **(extra_env or {}),
            }
        )
        if not fast:  # nor any timing this test process may have in its environment
            for key in FAST_ENV.keys() - timings.keys() - (extra_env or {}).keys():
                self.env.pop(key, None)
        self.engine = make_engine(db_url)
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=2)
        settings = StoreSettings(
            home=root / "home",
            s3_endpoint=self.env.get("LORAFLEET_S3_ENDPOINT"),
            s3_access_key=self.env.get("LORAFLEET_S3_ACCESS_KEY"),
            s3_secret_key=self.env.get("LORAFLEET_S3_SECRET_KEY"),
        )
        self.blobs = open_blob_store(blob_url, settings)
        self.procs: list[Proc] = []
        self.workers: list[Proc] = []
        self.bridges: list[Proc] = []
        self.faults: dict[str, int] = {}
        self._supervising = threading.Event()

    # --- processes ------------------------------------------------------------------------

    def add_proc(self, name: str, argv: list[str]) -> Proc:
        """A process with this cluster's environment, supervised and stopped with it."""
        proc = Proc(name, argv, self.env, self.logs)
        self.procs.append(proc)
        return proc

    def start(self, workers: int = 1, bridges: int = 1, beat: bool = True) -> Cluster:
        """Start ``workers`` Celery workers (2 prefork processes each), bridges and beat."""
        for i in range(workers):
            self.workers.append(
                self.add_proc(f"worker-{i}", worker_argv(f"chaos{i}", app=CELERY_APP))
            )
        for i in range(bridges):
            self.bridges.append(self.add_proc(f"bridge-{i}", self.bridge_argv()))
        for w in self.workers:
            w.start(WORKER_READY)
        for b in self.bridges:
            b.start(BRIDGE_READY)
        if beat:
            schedule = self.root / "home" / f"beat-{uuid.uuid4().hex[:6]}"
            self.add_proc("beat", beat_argv(schedule)).start()
        if not self._supervising.is_set():
            self._supervising.set()
            threading.Thread(target=self._supervise, name="supervisor", daemon=True).start()
        return self

    def _supervise(self) -> None:
        # The orchestrator: whatever dies on its own is restarted (and counted as a crash).
        while self._supervising.is_set():
            for proc in list(self.procs):
                proc.restart_if_crashed()
            time.sleep(0.5)

    def crashes(self) -> dict[str, list[str]]:
        """Processes that exited on their own (not killed by a test), with why."""
        return {p.name: p.crashes for p in self.procs if p.crashes}

    def bridge_argv(self) -> list[str]:
        # A fresh consumer name per start, like a replacement pod; the dead one's pending
        # entries are taken over with XAUTOCLAIM.
        return bridge_argv(f"chaos-bridge-{uuid.uuid4().hex[:8]}")

    def restart_bridge(self, bridge: Proc) -> None:
        bridge.argv = self.bridge_argv()
        bridge.start(BRIDGE_READY)

    def fault(self, kind: str) -> None:
        """Count one injected fault of ``kind``."""
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def stop(self) -> None:
        """Stop every process we started (reverse order), and close our connections."""
        self._supervising.clear()
        for proc in reversed(self.procs):
            proc.stop()
        self.redis.close()
        self.engine.dispose()

    def logs_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail(2500)}" for p in self.procs)

    # --- announcing -----------------------------------------------------------------------

    def plan(self, n: int, tag: str) -> list[tuple[JobCompleted, Announced]]:
        """``n`` announcements with distinct coordinates over a few shared artifacts:
        most to the auto namespace (-> ready), every 5th to the manual one (-> pending),
        every 10th with an adapter for another model (-> failed, ``shape_mismatch``)."""
        out = []
        for i in range(n):
            ns, artifact = AUTO_NS, self.artifacts[f"valid-{i % 3}"]
            expected, code = "ready", None
            if i % 10 == 9:
                artifact, expected, code = self.artifacts["invalid"], "failed", "shape_mismatch"
            elif i % 5 == 3:
                ns, expected = MANUAL_NS, "pending"
            coords = f"{ns}/bot-{tag}-{i % 10}@1.{i // 10}.0"
            event = JobCompleted(
                job_id=f"job-{tag}-{i}",
                namespace=ns,
                output_model=coords,
                base_model=BASE_MODEL,
                artifact_uri=artifact.resolve().as_uri(),
                hyperparameters={"lr": 1e-4, "i": i},
            )
            out.append((event, Announced(event.event_id, coords, expected, code)))
        return out

    def announce(
        self, plan: list[tuple[JobCompleted, Announced]], *, per_second: float | None = None
    ) -> list[Announced]:
        """XADD every planned event (retrying while Redis is down, as a trainer would), and
        every 20th a second time (a trainer retrying its announcement); returns what was
        acknowledged by Redis."""
        sent: list[Announced] = []
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=2)
        try:
            for i, (event, announced) in enumerate(plan):
                copies = 2 if i % 20 == 7 else 1
                for _ in range(copies):
                    self._publish_retrying(client, event)
                announced.sent_at = time.time()
                sent.append(announced)
                if per_second:
                    time.sleep(1.0 / per_second)
        finally:
            client.close()
        return sent

    def _publish_retrying(self, client: redis.Redis, event: JobCompleted) -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                publish(client, streams.JOBS_STREAM, event)
                return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                # Not acknowledged: the trainer does not know whether it landed and sends
                # it again (same event_id), which the pipeline must absorb.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def announce_in_background(
        self, plan: list[tuple[JobCompleted, Announced]], per_second: float
    ) -> tuple[threading.Thread, list[Announced]]:
        """``announce`` on a thread; the list fills as Redis acknowledges each event."""
        sent: list[Announced] = []

        def run() -> None:
            sent.extend(self.announce(plan, per_second=per_second))

        thread = threading.Thread(target=run, name="announcer", daemon=True)
        thread.start()
        return thread, sent

    # --- observing --------------------------------------------------------------------------

    def wait_settled(self, announced: list[Announced], timeout: float = 150.0) -> float:
        """Wait until every announcement has a final outcome and the outbox is drained;
        returns the seconds waited. On timeout the checker still runs (and reports)."""
        start = time.monotonic()
        try:
            wait_for(lambda: settled(self.engine, self.redis, announced), timeout, "quiescence")
        except AssertionError:
            pass
        return time.monotonic() - start

    def check(
        self,
        name: str,
        announced: list[Announced],
        started: float,
        others: set[str] | frozenset[str] = frozenset(),
    ) -> Report:
        """Run the total-queue checker and stamp the report with our faults and duration."""
        report = check(name, self.engine, self.redis, self.blobs, announced, others)
        report.faults = dict(self.faults)
        report.crashes = self.crashes()
        report.seconds = time.monotonic() - started
        return report

    def redelivered_tasks(self) -> int:
        """Task ids that more than one worker start received: work a kill interrupted and
        the broker handed out again (the proof that a kill hit something in flight)."""
        seen: dict[str, int] = {}
        for proc in self.workers:
            text = proc.log_path.read_text(errors="replace") if proc.log_path.exists() else ""
            for match in TASK_RECEIVED.finditer(text):
                seen[match[1]] = seen.get(match[1], 0) + 1
        return sum(1 for count in seen.values() if count > 1)

    def settled_one(self, event_id: str) -> bool:
        """Whether the ingest record of ``event_id`` is ``done`` or ``failed``."""
        from store.models import IngestRecord

        with self.engine.connect() as conn:
            status = conn.execute(
                sa.select(IngestRecord.status).where(IngestRecord.event_id == event_id)
            ).scalar_one_or_none()
        return status in ("done", "failed")

    def final_records(self) -> int:
        """How many ingest records are ``done`` or ``failed`` by now."""
        from store.models import IngestRecord

        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(IngestRecord)
                    .where(IngestRecord.status.in_(("done", "failed")))
                ).scalar_one()
            )
