"""Benchmark: ``catalog.list_adapters`` over 10,000 adapter versions on a fresh database.

Creates a throw-away PostgreSQL database (or uses ``--database-url``), migrates it, inserts
``--versions`` rows spread over namespaces and statuses, then times typical listing queries
(filters + search + sort, first page and a deep page). Also times ``commit_version`` for a
few hundred registrations (the full write path: quota check, status machine, outbox).
Prints a table and writes ``bench/results/store_list.json``.

    .venv/bin/python bench/store_list.py [--versions 10000] [--repeat 9]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store import catalog, registry, tenancy  # noqa: E402
from store.db import make_engine, upgrade  # noqa: E402
from store.models import AdapterVersion, Namespace, Package, PackageFile, Provenance  # noqa: E402

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
RESULTS = Path(__file__).resolve().parent / "results" / "store_list.json"
WORDS = ["chat", "summarize", "sql", "support", "legal", "medical", "code", "translate"]
STATUSES = ["ready"] * 14 + ["pending"] * 4 + ["archived", "failed"]


def _fresh_postgres() -> tuple[str, Any]:
    name = f"lorafleet_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", drop


def _seed(engine: sa.Engine, n_versions: int, n_namespaces: int, fleet_every: int = 3) -> None:
    """``n_versions`` rows; every ``fleet_every``-th on base model ``llama-3-70b``."""
    rng = random.Random(7)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    with Session(engine) as s:
        for k in range(n_namespaces):
            s.add(Namespace(name=f"team-{k:02d}", created_by="bench"))
        s.commit()
        rows = []
        for i in range(n_versions):
            ts = start + timedelta(minutes=i)
            rows.append(
                dict(
                    id=f"ad_{uuid.UUID(int=rng.getrandbits(128)).hex}",
                    namespace=f"team-{i % n_namespaces:02d}",
                    # (name suffix, version) determine i, so coordinates are unique.
                    name=f"{WORDS[(i // n_namespaces) % len(WORDS)]}-{i // 160}",
                    version=f"1.{i % 160}.0",
                    base_model="llama-3-8b" if i % fleet_every else "llama-3-70b",
                    format="hf_peft",
                    rank=16,
                    alpha=32.0,
                    target_modules=["q_proj", "v_proj"],
                    status=STATUSES[rng.randrange(len(STATUSES))],
                    content_sha256=f"{i:064x}",
                    manifest_sha256=f"{i:064x}",
                    total_bytes=1 << 20,
                    created_at=ts,
                    created_by="bench",
                    updated_at=ts,
                    updated_by="bench",
                    generation=0,
                )
            )
        for chunk in range(0, len(rows), 2000):
            s.execute(sa.insert(AdapterVersion), rows[chunk : chunk + 2000])
        s.commit()
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("ANALYZE"))
            conn.commit()


def _time(fn: Any, repeat: int) -> dict[str, float]:
    fn()  # warm caches and the connection pool
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 3),
        "min_ms": round(samples[0], 3),
        "max_ms": round(samples[-1], 3),
    }


def _queries(engine: sa.Engine, n_namespaces: int) -> dict[str, dict[str, Any]]:
    visible = {f"team-{k:02d}" for k in range(0, n_namespaces, 4)}
    cases: dict[str, dict[str, Any]] = {
        "ns+status+search+sort, page 1": dict(
            namespaces=None, namespace="team-03", status="ready", search="chat", sort="-created_at"
        ),
        "ns+status+sort, last page": dict(
            namespaces=None, namespace="team-03", status="ready", sort="-created_at"
        ),
        "no filter, sort -created_at, page 1": dict(namespaces=None),
        "no filter, sort name, deep page": dict(namespaces=None, sort="name"),
        "no filter, sort -created_at, last page": dict(namespaces=None, sort="-created_at"),
        "visible ns + search, sort name, p1": dict(namespaces=visible, search="sum", sort="name"),
        "base_model + status=ready, page 1": dict(
            namespaces=None, base_model="llama-3-70b", status="ready"
        ),
    }
    out: dict[str, dict[str, Any]] = {}
    with Session(engine) as s:
        for label, kwargs in cases.items():
            _, total = catalog.list_adapters(s, page_size=50, **kwargs)
            last = max(1, -(-total // 50))
            page = last if "last page" in label else (last * 3 // 4 if "deep" in label else 1)
            result = _time(
                lambda kw=kwargs, p=page: catalog.list_adapters(s, page=p, page_size=50, **kw),
                REPEAT,
            )
            out[label] = {"total": total, "page": page, **result}
            s.rollback()
    return out


def _time_commits(engine: sa.Engine, n: int) -> dict[str, float]:
    with Session(engine, expire_on_commit=False) as s:
        tenancy.register_base_model(
            s,
            "tiny",
            {
                "architectures": ["LlamaForCausalLM"],
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "vocab_size": 256,
            },
            actor="bench",
        )
        tenancy.create_namespace(s, "bench-auto", approval_policy="auto", actor="bench")
        s.commit()
        samples = []
        for i in range(n):
            f = PackageFile("adapter_model.safetensors", "original", f"{i:064x}", 10, f"k{i}")
            pkg = Package("hf_peft", 4, 8.0, ["q_proj"], (f,), {"i": i}, f"{i:064x}", f"{i:064x}")
            t0 = time.perf_counter()
            registry.commit_version(
                s,
                pkg,
                namespace="bench-auto",
                name=f"reg-{i}",
                version="1.0.0",
                base_model="tiny",
                provenance=Provenance(),
                actor="bench",
            )
            s.commit()
            samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {
        "count": n,
        "median_ms": round(statistics.median(samples), 3),
        "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 3),
    }


REPEAT = 9


def main() -> None:
    global REPEAT
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--database-url", default=None, help="default: a fresh PostgreSQL DB")
    args = parser.parse_args()
    REPEAT = args.repeat
    drop = None
    url = args.database_url
    if url is None:
        url, drop = _fresh_postgres()
    try:
        upgrade(url)
        engine = make_engine(url)
        t0 = time.perf_counter()
        _seed(engine, args.versions, args.namespaces)
        seed_s = time.perf_counter() - t0
        queries = _queries(engine, args.namespaces)
        commits = _time_commits(engine, args.commits)
        engine.dispose()
    finally:
        if drop is not None:
            drop()
    backend = url.split(":", 1)[0]
    print(f"\nlist_adapters over {args.versions} versions ({backend}), {REPEAT} runs each, ms")
    print(f"{'query':40} {'total':>6} {'page':>5} {'median':>8} {'min':>8} {'max':>8}")
    for label, r in queries.items():
        print(
            f"{label:40} {r['total']:>6} {r['page']:>5} "
            f"{r['median_ms']:>8.2f} {r['min_ms']:>8.2f} {r['max_ms']:>8.2f}"
        )
    print(
        f"commit_version (auto ns, outbox + generation): median {commits['median_ms']:.2f} ms, "
        f"p95 {commits['p95_ms']:.2f} ms over {commits['count']}"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "store_list",
                "backend": backend,
                "versions": args.versions,
                "namespaces": args.namespaces,
                "repeat": REPEAT,
                "page_size": 50,
                "seed_seconds": round(seed_s, 2),
                "queries": queries,
                "commit_version": commits,
                "machine": platform.platform(),
                "at": datetime.now(UTC).isoformat(),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
