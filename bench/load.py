"""Load: 50 concurrent uploads through the registry API while a 1,000-event burst goes
through the event pipeline, on whatever cores this machine has (CI: 2).

Setup, all real processes: a fresh PostgreSQL database, our own ``redis-server``, the
registry API (``lorafleet api``, one uvicorn process), one Celery worker node (2 prefork
processes), the ingest bridge and beat; a filesystem blob store. Announcements share three
small HF PEFT artifacts (plus one invalid), each with distinct coordinates; 1 in 5 goes to a
manually approved namespace, 1 in 10 is refused (see ``tests/chaos/cluster.py``).

Measured:
* API latency: wall time of each ``POST /v1/adapters`` (client side, 50 threads at once).
* event-to-outcome: from the moment Redis acknowledged an announcement's XADD to the commit
  that made its ingest record final (``ready``/``pending``/``failed``); event-to-ready is
  the same for ready versions only.
* the total-queue checker's lost / duplicated / unexpected counts over the burst.

* with ``--reads-per-s R``: the registry API's read latency (``GET /v1/adapters`` filtered
  and ``GET /v1/fleet``, open-loop at R requests a second, ``bench/api_load.read_load``) from
  the start of the burst until it has drained.

Prints a table and writes ``bench/results/load.json``.

    .venv/bin/python bench/load.py [--events 1000] [--uploads 50] [--reads-per-s 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "load.json"
# The load run reuses the chaos suite's harness (processes, checker, artifacts).
sys.path[:0] = [str(REPO / "tests" / "chaos"), str(REPO / "tests"), str(REPO), str(REPO / "bench")]

import httpx  # noqa: E402
from cluster import Cluster  # noqa: E402
from faults import RedisServer  # noqa: E402
from harness import fresh_database, write_artifacts  # noqa: E402
from percentiles import summarize  # noqa: E402
from support.processes import lorafleet_argv, wait_for  # noqa: E402
from support.services import free_port  # noqa: E402

ADMIN_TOKEN = "lft_load_admin_token_0123456789"


def upload_all(api_url: str, artifacts: dict[str, Path], uploads: int) -> list[dict[str, Any]]:
    """``uploads`` concurrent ``POST /v1/adapters``; each result has status and seconds."""
    from store.client import ApiError, RegistryClient

    def one(i: int) -> dict[str, Any]:
        with RegistryClient(api_url, ADMIN_TOKEN, timeout=120) as client:
            start = time.perf_counter()
            try:
                body = client.upload_adapter(
                    artifacts[f"valid-{i % 3}"],
                    namespace="acme",
                    name=f"upload-{i}",
                    version="1.0.0",
                    base_model="tiny-llama",
                )
                return {"ok": True, "status": body["status"], "s": time.perf_counter() - start}
            except (ApiError, OSError) as exc:
                return {"ok": False, "error": str(exc), "s": time.perf_counter() - start}

    with ThreadPoolExecutor(max_workers=uploads) as pool:
        return list(pool.map(one, range(uploads)))


def event_latencies(cluster: Cluster, announced: list[Any]) -> tuple[list[float], list[float]]:
    """(event-to-outcome, event-to-ready) in seconds, from the ingest records' final commit."""
    import sqlalchemy as sa

    from store.models import AdapterVersion, IngestRecord

    sent = {a.event_id: a.sent_at for a in announced}
    with cluster.engine.connect() as conn:
        rows = conn.execute(
            sa.select(IngestRecord.event_id, IngestRecord.updated_at, AdapterVersion.status)
            .join(AdapterVersion, AdapterVersion.id == IngestRecord.adapter_id, isouter=True)
            .where(IngestRecord.event_id.in_(list(sent)))
        ).all()
    outcome, ready = [], []
    for event_id, updated_at, status in rows:
        seconds = updated_at.timestamp() - sent[event_id]
        outcome.append(seconds)
        if status == "ready":
            ready.append(seconds)
    return outcome, ready


def run(
    events: int = 1000, uploads: int = 50, workdir: Path | None = None, reads_per_s: float = 0
) -> dict[str, Any]:
    """Run the load once and return the results (see the module docstring)."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="lorafleet-load-") as tmp:
            return run(events, uploads, Path(tmp), reads_per_s)
    root = Path(workdir)
    redis_server = RedisServer(root / "redis")
    redis_server.start()
    try:
        with fresh_database("lorafleet_load") as db_url:
            artifacts = write_artifacts(root / "artifacts")
            cluster = Cluster(
                root,
                db_url=db_url,
                redis_url=redis_server.url,
                blob_url=f"file://{root / 'blobs'}",
                artifacts=artifacts,
                extra_env={"LORAFLEET_ADMIN_TOKEN": ADMIN_TOKEN},
            )
            try:
                return _measure(cluster, events, uploads, reads_per_s)
            finally:
                cluster.stop()
    finally:
        redis_server.stop()


def _measure(cluster: Cluster, events: int, uploads: int, reads_per_s: float) -> dict[str, Any]:
    """Start the pipeline and the API, run both loads at once, check and measure."""
    cluster.start(workers=1, bridges=1)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    api = cluster.add_proc("api", lorafleet_argv("api", "--host", "127.0.0.1", "--port", str(port)))
    api.start()
    wait_for(
        lambda: httpx.get(f"{api_url}/v1/health/ready", timeout=2).status_code == 200,
        60,
        "registry API ready",
    )
    reads: dict[str, Any] = {}
    stop_reads = threading.Event()
    reader = None
    if reads_per_s:
        from api_load import read_load

        mix = [
            ("list ns+status", "/v1/adapters", {"namespace": "acme", "status": "ready"}),
            ("list search", "/v1/adapters", {"search": "ld", "sort": "name"}),
            ("fleet", "/v1/fleet", {"base_model": "tiny-llama"}),
        ]

        def read_until_drained() -> None:
            reads.update(
                read_load(api_url, ADMIN_TOKEN, reads_per_s, stop=stop_reads, mix=mix).summary()
            )

        reader = threading.Thread(target=read_until_drained, daemon=True)
        reader.start()
    started = time.monotonic()
    thread, sent = cluster.announce_in_background(cluster.plan(events, "ld"), per_second=None)
    upload_results = upload_all(api_url, cluster.artifacts, uploads) if uploads else []
    thread.join(timeout=600)
    burst_s = time.monotonic() - started
    cluster.wait_settled(sent, timeout=900)
    drained_s = time.monotonic() - started
    stop_reads.set()
    if reader is not None:
        reader.join(timeout=60)
    uploaded = {f"acme/upload-{i}@1.0.0" for i in range(uploads)}
    report = cluster.check(f"load: {events}-event burst", sent, started, others=uploaded)
    outcome, ready = event_latencies(cluster, sent)
    api_ok = [r for r in upload_results if r["ok"] and r["status"] == "ready"]
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "events": len(sent),
        "uploads": uploads,
        "uploads_ok": len(api_ok),
        "upload_errors": [r.get("error") for r in upload_results if not r["ok"]][:5],
        "api_latency": summarize([r["s"] for r in upload_results]),
        "event_to_outcome": summarize(outcome),
        "event_to_ready": summarize(ready),
        "burst_announce_s": round(burst_s, 1),
        "drained_s": round(drained_s, 1),
        "events_per_s": round(len(sent) / drained_s, 1) if drained_s else 0.0,
        "checker": report.counts(),
        "reads_per_s": reads_per_s,
        "reads_during_burst": reads,
    }


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lorafleet load ({result['machine']['cpus']} cores)")
    for col in ("measure", "n", "p50 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="right" if col != "measure" else "left")
    for label, key in (
        ("API upload latency", "api_latency"),
        ("event -> final outcome", "event_to_outcome"),
        ("event -> ready", "event_to_ready"),
    ):
        s = result[key]
        table.add_row(label, str(s["n"]), str(s["p50_ms"]), str(s["p99_ms"]), str(s["max_ms"]))
    Console().print(table)
    c = result["checker"]
    print(
        f"uploads ok {result['uploads_ok']}/{result['uploads']}; events {result['events']} "
        f"drained in {result['drained_s']} s ({result['events_per_s']}/s); "
        f"lost {c['lost']} duplicated {c['duplicated']} unexpected {c['unexpected']}"
    )
    if result.get("reads_during_burst"):
        from api_load import print_reads

        print_reads(
            f"API reads at {result['reads_per_s']:g}/s while the burst drained",
            result["reads_during_burst"],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument(
        "--reads-per-s", type=float, default=0, help="API reads a second during the burst"
    )
    args = parser.parse_args()
    result = run(args.events, args.uploads, reads_per_s=args.reads_per_s)
    print_table(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
