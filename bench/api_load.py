"""Registry API under read load: ``GET /v1/adapters`` (filtered) and ``GET /v1/fleet`` at a
fixed arrival rate on PostgreSQL with 10,000 adapter versions (issue 16, goal 5).

Setup, real processes: a fresh PostgreSQL database seeded like ``bench/store_list.py``
(10,000 versions over 20 namespaces, two canonical files each; base model ``llama-3-70b``
holds every ``--fleet-every``-th version, so its fleet view is an engine's worth of ready
adapters, ``llama-3-8b`` holds the rest), a global reader token (what engines use), and the
registry API (``lorafleet api``, ``--api-workers`` uvicorn processes) as a child process.

The load is open-loop (``read_load``): request ``i`` is sent at ``t0 + i / rate`` whatever
the earlier ones are doing, and its latency counts from that scheduled instant, so a server
that falls behind shows it in the percentiles (no coordinated omission). The mix cycles
through list queries (namespace + status + sort, search, base model + status, a deep page)
and the fleet view. The same generator runs during a 1,000-event burst in
``bench/load.py --reads-per-s``.

Prints a table and writes ``bench/results/api_load.json``.

    .venv/bin/python bench/api_load.py [--rate 200] [--seconds 20] [--versions 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "api_load.json"
sys.path[:0] = [str(REPO / "tests"), str(REPO), str(REPO / "bench")]

import httpx  # noqa: E402
from cpu import postgres_cpu_seconds, tree_cpu_seconds  # noqa: E402
from percentiles import summarize  # noqa: E402

ADMIN_TOKEN = "lft_api_load_admin_token_0123456789"
READ_MIX: list[tuple[str, str, dict[str, Any]]] = [
    ("list ns+status", "/v1/adapters", {"namespace": "team-03", "status": "ready"}),
    ("list search", "/v1/adapters", {"search": "chat", "sort": "name"}),
    ("list base+status", "/v1/adapters", {"base_model": "llama-3-70b", "status": "ready"}),
    ("list deep page", "/v1/adapters", {"namespace": "team-07", "page": 3}),
    ("fleet", "/v1/fleet", {"base_model": "llama-3-70b"}),
]


@dataclass
class ReadResults:
    """Per-label latencies (seconds from the scheduled send) and the failures."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    sent: int = 0
    seconds: float = 0.0  # from the first send to the last answer
    late_starts: int = 0  # requests the generator itself sent > 5 ms after their slot
    unfinished: int = 0  # still unanswered when the run ended (see ``drain_s``)

    def all(self) -> list[float]:
        return [v for values in self.latencies.values() for v in values]

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "errors": len(self.errors),
            "error_samples": self.errors[:5],
            "late_starts": self.late_starts,
            "unfinished": self.unfinished,
            "answered_per_s": round(len(self.all()) / self.seconds, 1) if self.seconds else 0.0,
            "all": summarize(self.all()),
            **{label: summarize(v) for label, v in self.latencies.items()},
        }


async def _get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, int]:
    """One keep-alive HTTP/1.1 GET on an open connection: (status, body bytes)."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status, length


async def _read_load(
    api_url: str,
    token: str,
    rate: float,
    seconds: float | None,
    stop: threading.Event | None,
    mix: list[tuple[str, str, dict[str, Any]]],
    connections: int = 64,
    drain_s: float = 10.0,
) -> ReadResults:
    # A small HTTP/1.1 client on asyncio streams rather than httpx: httpx's pool spends
    # O(queued requests) per request, so at a few hundred a second behind a slow server the
    # generator, not the server, became the bottleneck (seen: a stalled run).
    results = ReadResults()
    url = httpx.URL(api_url)
    host, port = url.host, url.port or 80
    requests = []
    for label, path, params in mix:
        target = str(httpx.URL(path, params=params))
        raw = (
            f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
        )
        requests.append((label, raw.encode()))
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (item := await queue.get()) is not None:
                i, due = item
                label, raw = requests[i % len(requests)]
                try:
                    try:
                        status, _ = await _get(reader, writer, raw)
                    except (OSError, asyncio.IncompleteReadError):
                        # uvicorn closes a keep-alive connection idle for 5 s: reconnect
                        # and send once more (a second failure is an error).
                        writer.close()
                        reader, writer = await asyncio.open_connection(host, port)
                        status, _ = await _get(reader, writer, raw)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    results.errors.append(f"{label}: {exc!r}")
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                elapsed = time.perf_counter() - due
                if status != 200:
                    results.errors.append(f"{label}: {status}")
                else:
                    results.latencies.setdefault(label, []).append(elapsed)
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    t0 = time.perf_counter()
    i = 0
    while True:
        due = t0 + i / rate
        if seconds is not None and due - t0 >= seconds:
            break
        if stop is not None and stop.is_set():
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            results.late_starts += 1
        queue.put_nowait((i, due))
        i += 1
    results.sent = i
    for _ in workers:
        queue.put_nowait(None)
    # Bounded: what has not finished ``drain_s`` after the last send counts as unfinished
    # (a server that cannot keep up would otherwise keep the run going for minutes).
    _, pending = await asyncio.wait(workers, timeout=drain_s)
    for task in pending:
        task.cancel()
    results.seconds = time.perf_counter() - t0
    results.unfinished = results.sent - len(results.all()) - len(results.errors)
    return results


def read_load(
    api_url: str,
    token: str,
    rate: float,
    seconds: float | None = None,
    stop: threading.Event | None = None,
    mix: list[tuple[str, str, dict[str, Any]]] | None = None,
) -> ReadResults:
    """Send ``rate`` GETs a second (cycling through ``mix``) for ``seconds``, or until
    ``stop`` is set; each latency counts from the request's scheduled send time."""
    return asyncio.run(_read_load(api_url, token, rate, seconds, stop, mix or READ_MIX))


def _seed(url: str, versions: int, namespaces: int, fleet_every: int) -> str:
    """Seed the database; return a global reader token's plaintext."""
    import sqlalchemy as sa
    from sqlmodel import Session
    from store_list import _seed as seed_versions

    from store import auth, tenancy
    from store.db import make_engine
    from store.models import AdapterFile, AdapterVersion

    engine = make_engine(url)
    seed_versions(engine, versions, namespaces, fleet_every=fleet_every)
    with Session(engine) as s:
        config = {
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "vocab_size": 128256,
        }
        for name in ("llama-3-8b", "llama-3-70b"):
            tenancy.register_base_model(s, name, config, actor="bench")
        ids = s.execute(sa.select(AdapterVersion.id)).scalars().all()
        files = [
            dict(
                adapter_id=adapter_id,
                path=path,
                role="canonical",
                sha256=f"{k:064x}",
                size=1 << 20,
                blob_key=f"blob-{k}",
            )
            for k, (adapter_id, path) in enumerate(
                (a, p) for a in ids for p in ("adapter_config.json", "adapter_model.safetensors")
            )
        ]
        for chunk in range(0, len(files), 5000):
            s.execute(sa.insert(AdapterFile), files[chunk : chunk + 5000])
        token = auth.create_token(s, "reader", None, "bench-engine", created_by="bench")
        s.commit()
    # VACUUM as autovacuum would have by now: without the visibility map every count(*)
    # reads the heap (a freshly loaded table: 9 ms instead of 0.3 ms per count).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    engine.dispose()
    return token


def start_api(
    root: Path, db_url: str, extra_env: dict[str, str] | None = None, workers: int = 1
) -> tuple[Any, str]:
    """``lorafleet api --workers N`` on a free port against ``db_url``; (Proc, base URL)
    once ready."""
    from support.processes import Proc, lorafleet_argv, wait_for
    from support.services import free_port

    port = free_port()
    env = {
        **os.environ,
        "LORAFLEET_DATABASE_URL": db_url,
        "LORAFLEET_ADMIN_TOKEN": ADMIN_TOKEN,
        "LORAFLEET_HOME": str(root / "home"),
        "LORAFLEET_BLOB_URL": f"file://{root / 'blobs'}",
        "LORAFLEET_REDIS_URL": f"redis://127.0.0.1:6379/{os.environ.get('LORAFLEET_TEST_REDIS_DB', '0')}",
        "LORAFLEET_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    (root / "logs").mkdir(parents=True, exist_ok=True)
    argv = lorafleet_argv(
        "api", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)
    )
    proc = Proc("api", argv, env, root / "logs")
    proc.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(
        lambda: httpx.get(f"{url}/v1/health/ready", timeout=2).status_code == 200,
        60,
        "registry API ready",
    )
    return proc, url


def run(
    rate: float, seconds: float, versions: int, namespaces: int, fleet_every: int, workers: int
) -> dict:
    from store_list import _fresh_postgres

    from store.db import upgrade

    url, drop = _fresh_postgres()
    try:
        upgrade(url)
        t0 = time.perf_counter()
        token = _seed(url, versions, namespaces, fleet_every)
        seed_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory(prefix="lorafleet-api-load-") as tmp:
            proc, api_url = start_api(Path(tmp), url, workers=workers)
            try:
                fleet = httpx.get(
                    f"{api_url}/v1/fleet",
                    params={"base_model": "llama-3-70b"},
                    headers={"Authorization": f"Bearer {token}"},
                ).json()
                if "adapters" not in fleet:
                    raise SystemExit(f"GET /v1/fleet failed: {fleet}")
                read_load(api_url, token, 20, seconds=2)  # warm-up: pools, caches
                cpu0, pg0 = tree_cpu_seconds(proc.popen.pid), postgres_cpu_seconds()
                loaded = read_load(api_url, token, rate, seconds=seconds)
                cpu1, pg1 = tree_cpu_seconds(proc.popen.pid), postgres_cpu_seconds()
            finally:
                proc.stop()
    finally:
        drop()
    return {
        "benchmark": "api_load",
        "backend": "postgresql",
        "versions": versions,
        "api_workers": workers,
        "fleet_adapters": len(fleet["adapters"]),
        "rate_per_s": rate,
        "seconds": seconds,
        "seed_seconds": round(seed_s, 1),
        "reads": loaded.summary(),
        # What one request costs, whatever else shares the machine: the API process's and
        # PostgreSQL's CPU over the run divided by the requests answered.
        "api_cpu_ms_per_request": round((cpu1 - cpu0) * 1000 / max(1, len(loaded.all())), 2),
        "postgres_cpu_ms_per_request": round((pg1 - pg0) * 1000 / max(1, len(loaded.all())), 2),
        "load_average": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def print_reads(title: str, reads: dict[str, Any]) -> None:
    print(title)
    print(f"{'request':22} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, s in reads.items():
        if isinstance(s, dict) and "p99_ms" in s:
            print(f"{label:22} {s['n']:>6} {s['p50_ms']:>8} {s['p99_ms']:>8} {s['max_ms']:>8}")
    print(
        f"sent {reads['sent']}, errors {reads['errors']} {reads['error_samples']}, "
        f"unfinished {reads['unfinished']}, answered {reads['answered_per_s']}/s, "
        f"generator late starts {reads['late_starts']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument(
        "--fleet-every",
        type=int,
        default=50,
        help="every N-th version is on llama-3-70b (the fleet view asked for)",
    )
    parser.add_argument(
        "--api-workers", type=int, default=1, help="lorafleet api --workers (processes)"
    )
    args = parser.parse_args()
    result = run(
        args.rate, args.seconds, args.versions, args.namespaces, args.fleet_every, args.api_workers
    )
    print_reads(
        f"\nregistry API ({args.api_workers} worker processes) reads at {args.rate:g}/s for "
        f"{args.seconds:g} s, {args.versions} versions, fleet of {result['fleet_adapters']} adapters (PostgreSQL, "
        f"{os.cpu_count()} cores)",
        result["reads"],
    )
    print(
        f"CPU per answered request: API {result['api_cpu_ms_per_request']} ms, PostgreSQL "
        f"{result['postgres_cpu_ms_per_request']} ms (load average {result['load_average']})"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
