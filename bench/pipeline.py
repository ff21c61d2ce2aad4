"""Event pipeline throughput and latency: announcement → ready version → ``fleet.refresh``.

Setup (fresh for each run): a new PostgreSQL database, Redis (``--redis-url``, flushed),
a filesystem blob store and artifacts under a temp dir, a real Celery worker subprocess
(prefork, ``--workers`` processes) and the ingest bridge in a thread of this process.

All adapters are generated and written before the clock starts. Then every
``customizer.job.completed`` event is published in one burst, and a reader records when
each adapter's ``load`` entry arrives on the refresh stream. Reported, from the same run:

* throughput: registrations / (last refresh entry − first publish);
* latency p50/p90/p99 from the event's ``occurred_at`` to its refresh entry, per size class
  (a burst: the tail includes waiting in the queue behind the other events);
* the floor measured in the same run: a bare XADD→XREAD round trip plus reading and
  hashing the adapter's bytes (what any pipeline must do at least once per adapter).

    .venv/bin/python bench/pipeline.py [--quick] [--small 200] [--large 20]

Writes ``bench/results/pipeline.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis
import sqlalchemy as sa
import torch
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from events import streams  # noqa: E402
from events.models import JobCompleted  # noqa: E402
from events.publisher import publish  # noqa: E402
from lorafleet.logging import configure_logging  # noqa: E402
from store import tenancy  # noqa: E402
from store.db import make_engine, upgrade  # noqa: E402
from store.formats import SUPPORTED_MODULES, BaseModelSpec, CanonicalAdapter, write_hf_peft  # noqa: E402
from store.settings import StoreSettings  # noqa: E402

RESULTS = REPO / "bench" / "results" / "pipeline.json"
PG_ADMIN = os.environ.get(
    "LORAFLEET_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
# hidden 1024, 8 layers: fp32 LoRA over all 7 modules is ~0.63 MB per unit of rank.
HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 8,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
}
SMALL_RANK, LARGE_RANK = 2, 128  # ~1.3 MB and ~81 MB


def _adapter(spec: BaseModelSpec, rank: int, seed: int) -> CanonicalAdapter:
    gen = torch.Generator().manual_seed(seed)
    shapes = spec.module_shapes()
    weights = {
        (layer, m): (
            torch.randn(rank, shapes[m][0], generator=gen) * 0.01,
            torch.randn(shapes[m][1], rank, generator=gen) * 0.01,
        )
        for layer in range(spec.num_layers)
        for m in SUPPORTED_MODULES
    }
    return CanonicalAdapter(
        "hf_peft", rank, float(2 * rank), sorted(SUPPORTED_MODULES), spec.num_layers, weights
    )


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _floor_hash(directory: Path) -> float:
    start = time.perf_counter()
    for path in sorted(directory.iterdir()):
        h = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return time.perf_counter() - start


def _rtt(client: redis.Redis, rounds: int = 200) -> list[float]:
    key = f"{streams.PREFIX}:bench:rtt"
    client.delete(key)
    out = []
    last = "0-0"
    for _ in range(rounds):
        start = time.perf_counter()
        client.xadd(key, {"event": "x" * 400})
        ((_, entries),) = client.xread({key: last}, block=1000, count=1)
        last = entries[0][0]
        out.append(time.perf_counter() - start)
    client.delete(key)
    return out


def _start_worker(env: dict[str, str], log_path: Path, workers: int) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app:app", "worker", "-Q",
         "ingest,fleet,maintenance", f"--concurrency={workers}", "--pool=prefork",
         "-n", f"bench-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle", "-l", "INFO"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log_path.read_text()[-3000:])
        if b" ready." in log_path.read_bytes():
            time.sleep(1.0)
            return proc
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("worker did not start")


def run(args: argparse.Namespace) -> dict:
    from workers.bridge import IngestBridge
    from workers.celery_app import create_app
    from workers.runtime import Runtime
    from workers.settings import WorkerSettings

    configure_logging("WARNING")
    tmp = Path(tempfile.mkdtemp(prefix="lorafleet-bench-"))
    artifacts, blobs, home = tmp / "artifacts", tmp / "blobs", tmp / "home"
    for d in (artifacts, blobs, home):
        d.mkdir()
    db_name = f"lorafleet_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{db_name}"'))
    db_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{db_name}"
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    worker = None
    stop = threading.Event()
    try:
        upgrade(db_url)
        engine = make_engine(db_url)
        with Session(engine) as s:
            tenancy.create_namespace(s, "bench", approval_policy="auto", actor="bench")
            tenancy.register_base_model(s, "bench-llama", HF_CONFIG, actor="bench")
            s.commit()
        spec = BaseModelSpec.from_hf_config(HF_CONFIG)

        # Generate every adapter before the clock starts.
        jobs: list[tuple[str, Path, int]] = []
        for i in range(args.small + args.large):
            rank = SMALL_RANK if i < args.small else LARGE_RANK
            directory = artifacts / f"a{i:04d}"
            write_hf_peft(_adapter(spec, rank, seed=i), directory)
            jobs.append(
                (
                    "small" if rank == SMALL_RANK else "large",
                    directory,
                    sum(p.stat().st_size for p in directory.iterdir()),
                )
            )
        floor_hash = {
            cls: [_floor_hash(d) for c, d, _ in jobs if c == cls] for cls in ("small", "large")
        }
        rtt = _rtt(client)

        env = {**os.environ, "LORAFLEET_DATABASE_URL": db_url, "LORAFLEET_REDIS_URL": args.redis_url,
               "LORAFLEET_BLOB_URL": f"file://{blobs}", "LORAFLEET_HOME": str(home),
               "LORAFLEET_ARTIFACT_ROOTS": str(artifacts), "PYTHONPATH": str(REPO),
               "LORAFLEET_LOG_LEVEL": "WARNING"}  # fmt: skip
        worker = _start_worker(env, tmp / "worker.log", args.workers)
        settings = WorkerSettings(
            artifact_roots=str(artifacts), bridge_block_ms=100, bridge_consumer="bench"
        )
        store = StoreSettings(
            database_url=db_url, redis_url=args.redis_url, blob_url=f"file://{blobs}", home=home
        )
        bridge = IngestBridge(
            Runtime(settings, store),
            create_app(settings, redis_url=args.redis_url),
            settings=settings,
            stop=stop,
        )
        threading.Thread(target=bridge.run, daemon=True).start()

        arrivals: dict[str, float] = {}
        expected = len(jobs)

        def read_refresh() -> None:
            reader = redis.Redis.from_url(args.redis_url)
            last = "0-0"
            while not stop.is_set() and len(arrivals) < expected:
                for _, entries in reader.xread({streams.REFRESH_STREAM: last}, block=500) or []:
                    now = time.time()
                    for entry_id, fields in entries:
                        last = entry_id
                        event = json.loads(fields[b"event"])
                        if event["action"] == "load":
                            arrivals.setdefault(event["adapter"], now)

        reader = threading.Thread(target=read_refresh, daemon=True)
        reader.start()
        events: dict[str, tuple[str, JobCompleted]] = {}
        t0 = time.time()
        for i, (cls, directory, _) in enumerate(jobs):
            event = JobCompleted(job_id=f"bench-{i}", namespace="bench", output_model=f"bench/a{i:04d}@1.0.0",
                                 base_model="bench-llama", artifact_uri=directory.as_uri())  # fmt: skip
            publish(client, streams.JOBS_STREAM, event)
            events[event.output_model] = (cls, event)
        published = time.time()
        reader.join(timeout=args.timeout)
        done = max(arrivals.values()) if arrivals else time.time()
        latencies = {cls: [arrivals[k] - e.occurred_at.timestamp() for k, (c, e) in events.items() if c == cls and k in arrivals] for cls in ("small", "large")}  # fmt: skip
        with Session(engine) as s:
            statuses = dict(
                s.execute(
                    sa.text("select status, count(*) from ingest_records group by status")
                ).all()
            )
        engine.dispose()
        rtt_p50 = statistics.median(rtt)
        return {
            "bench": "pipeline",
            "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
            "setup": {"workers": args.workers, "pool": "prefork", "database": "postgresql", "blobs": "filesystem",
                      "small": {"count": args.small, "rank": SMALL_RANK, "bytes": next((b for c, _, b in jobs if c == "small"), 0)},
                      "large": {"count": args.large, "rank": LARGE_RANK, "bytes": next((b for c, _, b in jobs if c == "large"), 0)}},
            "registered": len(arrivals),
            "expected": expected,
            "ingest_statuses": statuses,
            "publish_s": published - t0,
            "wall_s": done - t0,
            "throughput_per_s": len(arrivals) / (done - t0) if arrivals else 0.0,
            "latency_s": {cls: {"p50": _pct(v, 50), "p90": _pct(v, 90), "p99": _pct(v, 99), "n": len(v)} for cls, v in latencies.items()},
            "floor_s": {cls: {"p50": rtt_p50 + _pct(v, 50), "p99": _pct(rtt, 99) + _pct(v, 99),
                              "xadd_xread_rtt_p50": rtt_p50, "read_hash_p50": _pct(v, 50)} for cls, v in floor_hash.items() if v},
        }  # fmt: skip
    finally:
        stop.set()
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        client.flushdb()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=200, help="~1.3 MB adapters")
    parser.add_argument("--large", type=int, default=20, help="~81 MB adapters")
    parser.add_argument("--quick", action="store_true", help="20 small + 2 large")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--redis-url", default=os.environ.get("LORAFLEET_BENCH_REDIS", "redis://127.0.0.1:6379/6")
    )
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    if args.quick:
        args.small, args.large = 20, 2
    result = run(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    table = Table("class", "n", "MB", "p50 s", "p90 s", "p99 s", "floor p50 s", title=(
        f"pipeline: {result['registered']}/{result['expected']} registered, "
        f"{result['throughput_per_s']:.2f} registrations/s, {args.workers} worker processes"))  # fmt: skip
    for cls, lat in result["latency_s"].items():
        floor = result["floor_s"].get(cls, {})
        mb = result["setup"][cls]["bytes"] / 1e6
        table.add_row(cls, str(lat["n"]), f"{mb:.1f}", f"{lat['p50']:.3f}", f"{lat['p90']:.3f}", f"{lat['p99']:.3f}", f"{floor.get('p50', float('nan')):.4f}")  # fmt: skip
    Console().print(table)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
