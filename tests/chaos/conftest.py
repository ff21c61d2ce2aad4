"""Fixtures of the chaos suite (``make chaos``): a fresh, seeded PostgreSQL database per test,
Redis DB index ``LORAFLEET_TEST_REDIS_DB`` (default 9) of the machine's Redis, shared
artifact directories, and ``make_cluster`` which starts the pipeline's processes and always
stops them. Every checker report is printed at the end of the run and, when
``LORAFLEET_CHAOS_REPORT`` names a file, written there as JSON."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from checker import REPORTS
from cluster import Cluster
from harness import AUTO_NS, BASE_MODEL, MANUAL_NS

PG_ADMIN_URL = os.environ.get(
    "LORAFLEET_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE_URL = os.environ.get("LORAFLEET_TEST_REDIS", "redis://127.0.0.1:6379")
CHAOS_REDIS_DB = int(os.environ.get("LORAFLEET_TEST_REDIS_DB", "9"))


def base_model_config(**overrides: Any) -> dict[str, Any]:
    """The tiny Llama every chaos test registers (the engine can load it too)."""
    from engine.tiny import tiny_config

    return tiny_config(**overrides)


def seed_registry(db_url: str) -> None:
    """Namespaces ``acme`` (auto approval), ``gated`` (manual) and the base model."""
    from sqlmodel import Session

    from store import registry
    from store.db import make_engine

    engine = make_engine(db_url)
    try:
        with Session(engine) as s:
            registry.create_namespace(s, AUTO_NS, approval_policy="auto", actor="chaos")
            registry.create_namespace(s, MANUAL_NS, approval_policy="manual", actor="chaos")
            registry.register_base_model(s, BASE_MODEL, base_model_config(), actor="chaos")
    finally:
        engine.dispose()


@pytest.fixture
def chaos_db() -> Iterator[str]:
    """A brand-new, migrated and seeded PostgreSQL database (dropped afterwards)."""
    from store.db import upgrade

    name = f"lorafleet_chaos_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        seed_registry(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def shared_redis_url() -> Iterator[str]:
    """Our DB index of the machine's Redis, flushed before and after."""
    url = f"{REDIS_BASE_URL}/{CHAOS_REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three valid HF PEFT adapters for the tiny model and one trained for another model
    (refused with ``shape_mismatch``), under one allowed artifact root."""
    from factories import random_adapter, write_hf_peft

    from store.formats import BaseModelSpec

    root = tmp_path_factory.mktemp("chaos-artifacts")
    spec = BaseModelSpec.from_hf_config(base_model_config())
    other = BaseModelSpec.from_hf_config(base_model_config(hidden_size=32, intermediate_size=64))
    out: dict[str, Path] = {"root": root}
    for seed in range(3):
        out[f"valid-{seed}"] = write_hf_peft(
            random_adapter(spec, rank=4, seed=seed), root / f"valid-{seed}"
        )
    out["invalid"] = write_hf_peft(random_adapter(other, rank=4, seed=9), root / "invalid")
    return out


@pytest.fixture
def make_cluster(
    tmp_path: Path, artifacts: dict[str, Path], chaos_db: str
) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(redis_url=..., blob_url=..., worker_db_url=..., extra_env=...)`` builds a
    ``Cluster`` on this test's database; every process it starts is stopped afterwards."""
    clusters: list[Cluster] = []

    def build(**kwargs: Any) -> Cluster:
        kwargs.setdefault("blob_url", f"file://{tmp_path / 'blobs'}")
        cluster = Cluster(tmp_path, db_url=chaos_db, artifacts=artifacts, **kwargs)
        clusters.append(cluster)
        return cluster

    try:
        yield build
    finally:
        for cluster in clusters:
            cluster.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORTS:
        return
    tr = terminalreporter
    tr.section("chaos: total-queue checker")
    header = f"{'test':<28}{'events':>7}{'faults':>7}{'lost':>6}{'dup':>5}{'unexp':>6}{'s':>7}"
    tr.write_line(header)
    for r in REPORTS:
        c = r.counts()
        tr.write_line(
            f"{r.name:<28}{c['events']:>7}{c['faults']:>7}{c['lost']:>6}"
            f"{c['duplicated']:>5}{c['unexpected']:>6}{c['seconds']:>7}"
        )
    path = os.environ.get("LORAFLEET_CHAOS_REPORT")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps([r.counts() for r in REPORTS], indent=2) + "\n")
