"""Event pipeline throughput and latency: announcement → ready version → ``fleet.refresh``.

Setup (fresh for each run): a new PostgreSQL database, Redis (``--redis-url``, flushed),
a filesystem blob store and artifacts under a temp dir, a real Celery worker subprocess
(prefork, ``--workers`` processes) and the ingest bridge in a thread of this process.

All adapters are generated and written before the clock starts. Then the
``customizer.job.completed`` events are published (in one burst, or ``--spaced`` seconds
apart for time-to-serve without queueing), and a reader records when each adapter's
``load`` entry arrives on the refresh stream. Reported, from the same run:

* throughput: registrations / (last refresh entry − first publish);
* latency p50/p90/p99 from the event's ``occurred_at`` to its refresh entry, per size class
  (a burst: the tail includes waiting in the queue behind the other events);
* where the time goes, stage by stage (the bridge and the ingest task write their spans with
  ``LORAFLEET_STAGE_TRACE``, ``workers/stages.py``): bridge read, each commit, the enqueue,
  the queue wait, fetch, parse + validate, blob write, the re-check, the register commit,
  the outbox relay, the refresh entry reaching a reader; p50 and p99 of each, next to its
  floor measured in the same run (a Redis round trip, a PostgreSQL commit, copying /
  parsing / hashing + writing the adapter's bytes);
* for ``--large``: ``large`` throughput against the machine's read + sha256 + write (+
  fsync) floor of the same bytes, one stream, measured in the same run, with the copies
  kept as a blob store keeps its blobs (and, for comparison, deleting each copy at once,
  which on some VM disks is several times faster);
* CPU seconds per registration of the worker (pool included), of this process (bridge +
  reader) and of every PostgreSQL server process, with the machine's load average: on a
  shared machine, what the pipeline costs is steadier than how long it waited for a CPU.

Before the clock, ``--warmup`` announcements (default 2 per worker process) go through the
pipeline and are left out of every number: a process's first task pays its first queries.

    .venv/bin/python bench/pipeline.py [--quick] [--small 200] [--large 20] [--spaced S]
                                       [--workers 2 | --workers 1,2,4]

``--workers 1,2,4`` repeats the run (fresh setup) for each count: the scaling table.
Writes ``bench/results/pipeline.json`` (``--out``) and prints the tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import redis
import sqlalchemy as sa
import torch
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from cpu import postgres_cpu_seconds, tree_cpu_seconds  # noqa: E402

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


def _floor_write(directory: Path, out_dir: Path, *, keep: bool = True) -> float:
    """Read, sha256 and write (+ fsync) every file of ``directory`` once: what storing the
    adapter as a content-addressed blob must do at least. ``keep``: the copies stay in
    ``out_dir`` (the caller removes it), as a blob store keeps its blobs; else they are
    deleted at once, so the next call rewrites just-freed space. On this project's VM disk
    the second is ~3x faster for 81 MB files (about 110 vs 300-400 ms), a speed no store
    that keeps what it writes gets, so the goal's floor is the kept one."""
    out_dir.mkdir(exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    written = []
    start = time.perf_counter()
    for path in sorted(directory.iterdir()):
        h = hashlib.sha256()
        dest = out_dir / f"{tag}-{path.name}"
        with path.open("rb") as fh, dest.open("wb") as out:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        written.append(dest)
    elapsed = time.perf_counter() - start
    if not keep:
        for dest in written:
            dest.unlink()
    return elapsed


def _floor_copy(directory: Path, out_dir: Path) -> float:
    """Copy the files (no hash, no fsync): what snapshotting a ``file://`` artifact costs."""
    start = time.perf_counter()
    shutil.copytree(directory, out_dir)
    elapsed = time.perf_counter() - start
    shutil.rmtree(out_dir)
    return elapsed


def _floor_parse(directory: Path) -> float:
    """Deserialize the safetensors file into tensors (no checks)."""
    from safetensors.torch import load_file

    start = time.perf_counter()
    for path in directory.glob("*.safetensors"):
        load_file(path)
    return time.perf_counter() - start


def _pg_commit(db_url: str, rounds: int = 100) -> list[float]:
    """One-row UPDATE + COMMIT round trips on the bench database."""
    eng = sa.create_engine(db_url)
    out = []
    with eng.connect() as conn:
        conn.execute(sa.text("create temporary table bench_floor (id int primary key, n int)"))
        conn.execute(sa.text("insert into bench_floor values (1, 0)"))
        conn.commit()
        for _ in range(rounds):
            start = time.perf_counter()
            conn.execute(sa.text("update bench_floor set n = n + 1 where id = 1"))
            conn.commit()
            out.append(time.perf_counter() - start)
    eng.dispose()
    return out


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


# (stage, what it is, its floor in ``stage_floors_s``; "bytes:" = the size class's own).
# Top-level segments add up to the whole occurred_at → refresh entry time; the indented ones
# are what the segment above them spends its time on.
STAGES = (
    ("bridge_read", "occurred_at → the bridge has the entry", "redis_rtt"),
    ("bridge", "bridge: record, enqueue (until the message is queued)", None),
    ("  bridge_record_commit", "insert the ingest record + commit", "pg_commit"),
    ("  bridge_enqueue", "apply_async of the ingest task", "redis_rtt"),
    ("queue_wait", "message queued → the ingest task starts", "redis_rtt"),
    ("task", "ingest task until the relay starts", None),
    ("  lookup_commit", "namespace + base model lookup, touch + commit", "pg_commit"),
    ("  fetch", "snapshot the file:// artifact", "bytes:copy"),
    ("  parse_validate", "detect, parse, validate the weights", "bytes:parse"),
    ("  blob_write", "store original + canonical blobs", "bytes:read_hash_write"),
    ("  recheck", "validate: base model + blobs still there, commit", "pg_commit"),
    ("  register_commit", "version + files + outbox + record done, commit", "pg_commit"),
    ("refresh", "relay start → the refresh entry read by a consumer", "redis_rtt+pg_commit"),
    ("  relay", "outbox read, XADD, mark sent + commit", "redis_rtt+pg_commit"),
    ("after_refresh", "(bridge: mark enqueued + ack, after the hop)", None),
    ("  bridge_mark_commit", "ingest record enqueued + commit", "pg_commit"),
    ("total", "occurred_at → refresh entry", None),
    ("engine_load", "refresh entry → the engine answers a completion with it", "engine_completion"),
    ("total_to_engine", "occurred_at → the engine answers with the adapter", None),
)


def _traces(client: redis.Redis) -> dict[str, list[tuple[str, float, float]]]:
    """Every event's spans, bridge and task together (last attempt wins per span name)."""
    out: dict[str, list[tuple[str, float, float]]] = {}
    for _, fields in client.xrange(streams.STAGE_TRACE_STREAM):
        out.setdefault(fields[b"event_id"].decode(), []).extend(
            tuple(span) for span in json.loads(fields[b"spans"])
        )
    return out


def _segments(
    occurred: float, arrival: float, spans: list[tuple[str, float, float]], answered: float | None
) -> dict[str, float]:
    by = {name: (start, end) for name, start, end in spans}
    if not {"bridge_read", "bridge_enqueue", "task", "relay"} <= set(by):
        return {}
    out = {
        name.strip(): by[name.strip()][1] - by[name.strip()][0]
        for name, _, _ in STAGES
        if name.strip() in by
    }
    read_end, queued = by["bridge_read"][1], by["bridge_enqueue"][1]
    task_start, relay_start = by["task"][0], by["relay"][0]
    out.update(
        bridge_read=read_end - occurred,
        bridge=queued - read_end,
        queue_wait=task_start - queued,
        task=relay_start - task_start,
        refresh=arrival - relay_start,
        total=arrival - occurred,
    )
    if answered is not None:
        out.update(engine_load=answered - arrival, total_to_engine=answered - occurred)
    return out


def _floor_of(
    key: str | None, floors: dict[str, dict[str, float]], cls: str, q: str
) -> float | None:
    if key is None:
        return None
    total = 0.0
    for part in key.split("+"):
        name = f"{cls}_{part.removeprefix('bytes:')}" if part.startswith("bytes:") else part
        if name not in floors:
            return None
        total += floors[name][q]
    return total


def _stages(
    rows: list[tuple[JobCompleted, float | None, float | None, list]], floors: dict, cls: str
) -> dict:
    """p50/p99 of each stage over the events of one size class, with its floor."""
    per_event = [_segments(e.occurred_at.timestamp(), a, spans, answered) for e, a, answered, spans in rows if a is not None]  # fmt: skip
    per_event = [seg for seg in per_event if seg]
    table = {}
    for name, what, floor_key in STAGES:
        key = name.strip()
        values = [seg[key] for seg in per_event if key in seg]
        if not values:
            continue
        table[key] = {"what": what, "depth": 1 if name.startswith(" ") else 0, "n": len(values),
                      "p50": _pct(values, 50), "p99": _pct(values, 99),
                      "floor_p50": _floor_of(floor_key, floors, cls, "p50"),
                      "floor_p99": _floor_of(floor_key, floors, cls, "p99")}  # fmt: skip
    # A segment's floor is the sum of its parts' floors; the whole's, the sum of the segments'.
    parent = None
    for name, _, _ in STAGES:
        key = name.strip()
        if key not in table:
            continue
        if table[key]["depth"] == 0:
            parent = key
        elif parent in ("bridge", "task"):
            for q in ("floor_p50", "floor_p99"):
                table[parent][q] = (table[parent][q] or 0.0) + (table[key][q] or 0.0)
    segments = [k for k in ("bridge_read", "bridge", "queue_wait", "task", "refresh") if k in table]
    if "total" in table:
        for q in ("floor_p50", "floor_p99"):
            table["total"][q] = sum(table[k][q] or 0.0 for k in segments)
            if "total_to_engine" in table and "engine_load" in table:
                parts = (table["total"][q], table["engine_load"][q])
                table["total_to_engine"][q] = None if None in parts else sum(parts)
    return table


def _class_wall(events: dict, arrivals: dict, cls: str) -> float | None:
    """Registrations/s of one size class: its count / (its last arrival − its first publish)."""
    keys = [k for k, (c, _) in events.items() if c == cls and k in arrivals]
    if not keys:
        return None
    first = min(events[k][1].occurred_at.timestamp() for k in keys)
    return len(keys) / (max(arrivals[k] for k in keys) - first)


def _cpu_seconds(worker_pid: int) -> dict:
    """CPU seconds (user + system) used so far by the Celery worker (its pool included), by
    this process (the bridge and the reader threads) and by PostgreSQL's server processes
    (all of them: other databases' work on a shared machine counts too)."""
    import psutil

    own = psutil.Process().cpu_times()
    return {
        "worker": tree_cpu_seconds(worker_pid),
        "bench_process": own.user + own.system,
        "postgres": postgres_cpu_seconds(),
    }


def _warm_up(
    client: redis.Redis, args: argparse.Namespace, artifacts: Path, spec: BaseModelSpec
) -> str:
    """Run ``--warmup`` small announcements through the pipeline before the clock starts
    (each process's first task pays its first queries and connections) and wait for their
    refresh entries; returns the refresh stream's last entry id."""
    pending = set()
    for i in range(args.warmup):
        directory = artifacts / f"warm{i:03d}"
        write_hf_peft(_adapter(spec, SMALL_RANK, seed=100_000 + i), directory)
        event = JobCompleted(job_id=f"warm-{i}", namespace="bench", output_model=f"bench/warm{i:03d}@1.0.0",
                             base_model="bench-llama", artifact_uri=directory.as_uri())  # fmt: skip
        publish(client, streams.JOBS_STREAM, event)
        pending.add(event.output_model)
    last, deadline = "0-0", time.monotonic() + 300
    while pending and time.monotonic() < deadline:
        for _, entries in client.xread({streams.REFRESH_STREAM: last}, block=500) or []:
            for entry_id, fields in entries:
                last = entry_id.decode()
                pending.discard(json.loads(fields[b"event"])["adapter"])
    if pending:
        raise RuntimeError(f"warm-up did not finish: {sorted(pending)}")
    client.delete(streams.STAGE_TRACE_STREAM)
    return last


def _base_config(args: argparse.Namespace, tmp: Path) -> dict:
    """The base model's config: ``HF_CONFIG``; with ``--engine`` a random Llama of the same
    shape (byte tokenizer, so a 272-token vocabulary) is written to ``tmp/model`` for it."""
    if not args.engine:
        return HF_CONFIG
    from engine.tiny import init_tiny

    model_dir = init_tiny(tmp / "model", hidden_size=HF_CONFIG["hidden_size"], layers=HF_CONFIG["num_hidden_layers"],
                          heads=HF_CONFIG["num_attention_heads"], intermediate_size=HF_CONFIG["intermediate_size"])  # fmt: skip
    return json.loads((Path(model_dir) / "config.json").read_text())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(
    argv: list[str], env: dict[str, str], log_path: Path, url: str, token: str
) -> subprocess.Popen[bytes]:
    """Start ``lorafleet ...`` and wait until ``url`` answers 200 (with ``token``)."""
    import httpx

    lorafleet = str(Path(sys.executable).parent / "lorafleet")
    proc = subprocess.Popen([lorafleet, *argv], cwd=REPO, env=env,
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log_path.read_text()[-3000:])
        try:
            if (
                httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=2).status_code
                == 200
            ):
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{argv[0]} did not start: {log_path.read_text()[-3000:]}")


def _engine_answers(base_url: str, token: str, adapter: str, timeout: float = 60.0) -> float | None:
    """The time the engine answered a 1-token completion on ``adapter`` (None: not within
    ``timeout``). Polls ``GET /v1/models/{adapter}`` (cheap) every 5 ms until the engine
    lists it, then asks for the completion, again until it answers 200."""
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        while time.monotonic() < deadline and http.get(f"/v1/models/{adapter}").status_code != 200:
            time.sleep(0.005)
        while time.monotonic() < deadline:
            body = {"model": adapter, "prompt": "hi", "max_tokens": 1}
            if http.post("/v1/completions", json=body).status_code == 200:
                return time.time()
            time.sleep(0.005)
    return None


def _completion_floor(base_url: str, token: str, adapter: str, n: int = 20) -> list[float]:
    """Seconds of ``n`` 1-token completions on ``adapter`` once it is resident (the first
    one, which may load it, is not counted): the least ``engine_load`` can be."""
    import httpx

    _engine_answers(base_url, token, adapter)
    body = {"model": adapter, "prompt": "hi", "max_tokens": 1}
    out = []
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        for _ in range(n):
            start = time.perf_counter()
            http.post("/v1/completions", json=body).raise_for_status()
            out.append(time.perf_counter() - start)
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
    servers: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    try:
        upgrade(db_url)
        engine = make_engine(db_url)
        with Session(engine) as s:
            tenancy.create_namespace(s, "bench", approval_policy="auto", actor="bench")
            tenancy.register_base_model(s, "bench-llama", _base_config(args, tmp), actor="bench")
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
        samples = {cls: [d for c, d, _ in jobs if c == cls][:5] for cls in ("small", "large")}
        floor_bytes = {
            cls: {
                "copy": [_floor_copy(d, tmp / "floor-copy") for d in dirs],
                "parse": [_floor_parse(d) for d in dirs],
                "read_hash_write_reused": [
                    _floor_write(d, tmp / "floor-write", keep=False) for d in dirs
                ],
                "read_hash_write": [_floor_write(d, tmp / "floor-write") for d in dirs],
            }
            for cls, dirs in samples.items()
            if dirs
        }
        shutil.rmtree(tmp / "floor-write", ignore_errors=True)
        rtt = _rtt(client)
        commit = _pg_commit(db_url)

        env = {**os.environ, "LORAFLEET_DATABASE_URL": db_url, "LORAFLEET_REDIS_URL": args.redis_url,
               "LORAFLEET_BLOB_URL": f"file://{blobs}", "LORAFLEET_HOME": str(home),
               "LORAFLEET_ARTIFACT_ROOTS": str(artifacts), "PYTHONPATH": str(REPO),
               "LORAFLEET_LOG_LEVEL": "WARNING", "LORAFLEET_STAGE_TRACE": "1"}  # fmt: skip
        worker = _start_worker(env, tmp / "worker.log", args.workers)
        engine_url, token = None, "lft_bench_" + uuid.uuid4().hex
        if args.engine:
            api_port, engine_port = _free_port(), _free_port()
            api_url = f"http://127.0.0.1:{api_port}"
            env_api = {**env, "LORAFLEET_ADMIN_TOKEN": token}
            servers.append(_serve(["api", "--host", "127.0.0.1", "--port", str(api_port)], env_api,
                                  tmp / "api.log", f"{api_url}/v1/health/live", token))  # fmt: skip
            env_engine = {**env, "NIM_PEFT_SOURCE": api_url, "LORAFLEET_TOKEN": token,
                          "NIM_SERVED_MODEL_NAME": "bench-llama", "NIM_MAX_LORA_RANK": str(LARGE_RANK)}  # fmt: skip
            engine_url = f"http://127.0.0.1:{engine_port}"
            servers.append(_serve(["engine", "serve", "--model-dir", str(tmp / "model"), "--host", "127.0.0.1",
                                   "--port", str(engine_port)], env_engine, tmp / "engine.log",
                                  f"{engine_url}/v1/models", token))  # fmt: skip
        settings = WorkerSettings(
            artifact_roots=str(artifacts),
            bridge_block_ms=100,
            bridge_consumer="bench",
            stage_trace=True,
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
        start_after = _warm_up(client, args, artifacts, spec)
        # The engine stage's floor: a 1-token completion on an adapter already loaded (one
        # forward pass of the base model plus the HTTP round trip), before the clock starts.
        completion = (
            _completion_floor(engine_url, token, "bench/warm000@1.0.0") if engine_url else []
        )

        arrivals: dict[str, float] = {}
        expected = len(jobs)

        def read_refresh() -> None:
            reader = redis.Redis.from_url(args.redis_url)
            last = start_after
            while not stop.is_set() and len(arrivals) < expected:
                for _, entries in reader.xread({streams.REFRESH_STREAM: last}, block=500) or []:
                    now = time.time()
                    for entry_id, fields in entries:
                        last = entry_id
                        event = json.loads(fields[b"event"])
                        if event["action"] == "load" and event["adapter"] not in arrivals:
                            arrivals[event["adapter"]] = now
                            if engine_url is not None:
                                threading.Thread(
                                    target=ask_engine, args=(event["adapter"],), daemon=True
                                ).start()

        answered: dict[str, float] = {}

        def ask_engine(adapter: str) -> None:
            if (at := _engine_answers(engine_url, token, adapter)) is not None:
                answered[adapter] = at

        reader = threading.Thread(target=read_refresh, daemon=True)
        reader.start()
        events: dict[str, tuple[str, JobCompleted]] = {}
        cpu0 = _cpu_seconds(worker.pid)
        t0 = time.time()
        for i, (cls, directory, _) in enumerate(jobs):
            event = JobCompleted(job_id=f"bench-{i}", namespace="bench", output_model=f"bench/a{i:04d}@1.0.0",
                                 base_model="bench-llama", artifact_uri=directory.as_uri())  # fmt: skip
            if args.spaced and i:
                time.sleep(args.spaced)
                event = event.model_copy(update={"occurred_at": datetime.now(UTC)})
            publish(client, streams.JOBS_STREAM, event)
            events[event.output_model] = (cls, event)
        published = time.time()
        reader.join(timeout=args.timeout)
        done = max(arrivals.values()) if arrivals else time.time()
        deadline = time.monotonic() + 60
        while engine_url and len(answered) < len(arrivals) and time.monotonic() < deadline:
            time.sleep(0.1)
        cpu1 = _cpu_seconds(worker.pid)
        n = max(len(arrivals), 1)
        cpu = {k: (cpu1[k] - cpu0[k]) / n for k in ("worker", "bench_process")}
        cpu["postgres_all"] = (cpu1["postgres"] - cpu0["postgres"]) / n  # every database
        latencies = {cls: [arrivals[k] - e.occurred_at.timestamp() for k, (c, e) in events.items() if c == cls and k in arrivals] for cls in ("small", "large")}  # fmt: skip
        with Session(engine) as s:
            statuses = dict(
                s.execute(
                    sa.text("select status, count(*) from ingest_records group by status")
                ).all()
            )
        engine.dispose()
        # The task writes its spans just after its refresh entry went out: wait for them.
        arrived = {e.event_id for k, (_, e) in events.items() if k in arrivals}
        traces = _traces(client)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
            any(span[0] == "task" for span in traces.get(i, [])) for i in arrived
        ):
            time.sleep(0.1)
            traces = _traces(client)
        rtt_p50 = statistics.median(rtt)
        floors = {"redis_rtt": {"p50": rtt_p50, "p99": _pct(rtt, 99)},
                  "pg_commit": {"p50": statistics.median(commit), "p99": _pct(commit, 99)},
                  **{f"{cls}_{k}": {"p50": _pct(v, 50), "p99": _pct(v, 99)} for cls, fb in floor_bytes.items() for k, v in fb.items()}}  # fmt: skip
        if completion:
            floors["engine_completion"] = {"p50": _pct(completion, 50), "p99": _pct(completion, 99)}
        stage_table = {
            cls: _stages([(e, arrivals.get(k), answered.get(k), traces.get(e.event_id, [])) for k, (c, e) in events.items() if c == cls], floors, cls)
            for cls in ("small", "large") if any(c == cls for c, _ in events.values())
        }  # fmt: skip
        large_wall = _class_wall(events, arrivals, "large")
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
            "cpu_s_per_registration": {**cpu, "machine_load_1m": os.getloadavg()[0]},
            "stage_floors_s": floors,
            "stages": stage_table,
            "large_vs_floor": None if large_wall is None or "large" not in floor_bytes else {
                "registrations_per_s": large_wall,
                "floor_per_s": 1 / _pct(floor_bytes["large"]["read_hash_write"], 50),
                "ratio": large_wall * _pct(floor_bytes["large"]["read_hash_write"], 50),
                "floor_reused_per_s": 1 / _pct(floor_bytes["large"]["read_hash_write_reused"], 50),
                "ratio_reused": large_wall * _pct(floor_bytes["large"]["read_hash_write_reused"], 50)},
        }  # fmt: skip
    finally:
        stop.set()
        for server in servers:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
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
        shutil.rmtree(tmp, ignore_errors=True)


def _print_run(result: dict, console: Console) -> None:
    workers = result["setup"]["workers"]
    table = Table("class", "n", "MB", "p50 s", "p90 s", "p99 s", "floor p50 s", title=(
        f"pipeline: {result['registered']}/{result['expected']} registered, "
        f"{result['throughput_per_s']:.2f} registrations/s, {workers} worker processes"))  # fmt: skip
    for cls, lat in result["latency_s"].items():
        floor = result["floor_s"].get(cls, {})
        mb = result["setup"][cls]["bytes"] / 1e6
        table.add_row(cls, str(lat["n"]), f"{mb:.1f}", f"{lat['p50']:.3f}", f"{lat['p90']:.3f}", f"{lat['p99']:.3f}", f"{floor.get('p50', float('nan')):.4f}")  # fmt: skip
    console.print(table)
    ms = lambda v: "" if v is None else f"{v * 1000:.1f}"  # noqa: E731
    for cls, stages in result["stages"].items():
        st = Table("stage", "p50 ms", "p99 ms", "floor p50 ms", "floor p99 ms", "what",
                   title=f"where the time goes: {cls} ({workers} worker processes)")  # fmt: skip
        for name, row in stages.items():
            label = ("  " * row["depth"]) + name
            st.add_row(label, ms(row["p50"]), ms(row["p99"]), ms(row["floor_p50"]), ms(row["floor_p99"]), row["what"])  # fmt: skip
        console.print(st)
    cpu = result["cpu_s_per_registration"]
    console.print(
        f"CPU per registration: worker {cpu['worker'] * 1000:.1f} ms, bridge + reader "
        f"{cpu['bench_process'] * 1000:.1f} ms, PostgreSQL (every database) "
        f"{cpu['postgres_all'] * 1000:.1f} ms; load average {cpu['machine_load_1m']:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    if result.get("large_vs_floor"):
        lf = result["large_vs_floor"]
        console.print(
            f"large: {lf['registrations_per_s']:.3f} registrations/s vs the read+sha256+write floor "
            f"{lf['floor_per_s']:.3f}/s (one stream, copies kept): {lf['ratio']:.2f}x; vs "
            f"{lf['floor_reused_per_s']:.3f}/s rewriting freed space (each copy deleted at "
            f"once): {lf['ratio_reused']:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=200, help="~1.3 MB adapters")
    parser.add_argument("--large", type=int, default=20, help="~81 MB adapters")
    parser.add_argument("--quick", action="store_true", help="20 small + 2 large")
    parser.add_argument(
        "--workers", default="2", help="worker processes; a list (1,2,4) runs once per count"
    )
    parser.add_argument(
        "--spaced", type=float, default=0.0,
        help="seconds between announcements (0: one burst); time to serve without queueing",
    )  # fmt: skip
    parser.add_argument(
        "--redis-url", default=os.environ.get("LORAFLEET_BENCH_REDIS", "redis://127.0.0.1:6379/6")
    )
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument(
        "--warmup", type=int, default=None,
        help="small announcements run before the clock (default 2 per worker process)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument(
        "--engine", action="store_true",
        help="also run the registry API and an engine of the same base model (a random Llama) "
        "and time each adapter from its refresh entry to the engine answering with it",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.small, args.large = 20, 2
    counts = [int(w) for w in str(args.workers).split(",")]
    console = Console(width=150)
    runs = []
    for count in counts:
        args.workers = count
        warmup_arg = args.warmup
        if args.warmup is None:
            args.warmup = 2 * count
        result = run(args)
        result["setup"]["spaced_s"] = args.spaced
        result["setup"]["warmup"] = args.warmup
        args.warmup = warmup_arg
        runs.append(result)
        _print_run(result, console)
    output = runs[0] if len(runs) == 1 else {"bench": "pipeline", "runs": runs}
    if len(runs) > 1:
        scaling = Table(
            "worker processes", "registrations/s", "vs 1 process", "p50 s", title="scaling"
        )
        base = runs[0]["throughput_per_s"]
        for r in runs:
            p50 = (
                r["latency_s"]["small"]["p50"]
                if r["latency_s"]["small"]["n"]
                else r["latency_s"]["large"]["p50"]
            )
            scaling.add_row(str(r["setup"]["workers"]), f"{r['throughput_per_s']:.2f}", f"{r['throughput_per_s'] / base:.2f}x", f"{p50:.3f}")  # fmt: skip
        console.print(scaling)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
