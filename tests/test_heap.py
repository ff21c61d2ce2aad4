"""Every serving process freezes its start-up heap before it serves (``store.heap``): the
registry API (one process, and each of ``--workers 2``), the engine and a Celery worker,
each a real process started as an operator starts it, on PostgreSQL and Redis."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest
from support.processes import (
    WORKER_READY,
    Proc,
    lorafleet_argv,
    process_env,
    wait_for,
    worker_argv,
)
from support.services import free_port, fresh_postgres_database

from engine.tiny import init_tiny
from store.db import upgrade

pytestmark = pytest.mark.timeout(240)

# The imports alone (torch, SQLAlchemy, FastAPI) leave well over this many objects tracked.
STARTUP_OBJECTS = 100_000
CONSOLE = re.compile(r"heap\.frozen\s.*component=(\w+).*objects=(\d+)")


def _frozen(proc: Proc) -> list[dict]:
    """The ``heap.frozen`` records in ``proc``'s log: JSON lines, or the console lines a
    Celery worker writes (it takes over stderr's formatting)."""
    records = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if "heap.frozen" not in line:
            continue
        if line.startswith("{"):
            records.append(json.loads(line))
        elif console := CONSOLE.search(line):
            records.append({"component": console[1], "objects": int(console[2])})
    return records


def _env(tmp_path: Path, **variables: str) -> dict[str, str]:
    env = process_env(
        {
            "LORAFLEET_HOME": str(tmp_path / "home"),
            "LORAFLEET_LOG_LEVEL": "info",
            "LORAFLEET_LOG_FORMAT": "json",
            **variables,
        }
    )
    env.pop("LORAFLEET_API_URL", None)
    return env


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_the_registry_api_freezes_its_startup_heap_in_each_process(
    tmp_path: Path, workers: int
) -> None:
    with fresh_postgres_database("lorafleet_heap") as database_url:
        upgrade(database_url)
        port = free_port()
        env = _env(
            tmp_path,
            LORAFLEET_DATABASE_URL=database_url,
            LORAFLEET_BLOB_URL=f"file://{tmp_path / 'blobs'}",
            LORAFLEET_ADMIN_TOKEN="lft_heap_test_admin_token_0123456789",
        )
        argv = lorafleet_argv("api", "--port", str(port), "--workers", str(workers))
        proc = Proc("api", argv, env, tmp_path)
        proc.start()
        try:
            url = f"http://127.0.0.1:{port}/v1/health/ready"
            wait_for(lambda: _ready(url), 90, "API ready")
            wait_for(lambda: len(_frozen(proc)) == workers, 30, "each process froze its heap")
        finally:
            proc.stop()
    records = _frozen(proc)
    assert [r["component"] for r in records] == ["api"] * workers
    assert all(r["objects"] > STARTUP_OBJECTS for r in records), records


def test_the_engine_freezes_its_startup_heap_before_serving(tmp_path: Path) -> None:
    model_dir = init_tiny(tmp_path / "model", seed=0)
    peft_root = tmp_path / "loras"
    peft_root.mkdir()
    port = free_port()
    env = _env(
        tmp_path,
        LORAFLEET_ENGINE_MODEL_DIR=str(model_dir),
        LORAFLEET_ENGINE_DEVICE="cpu",
        LORAFLEET_ENGINE_PORT=str(port),
        NIM_PEFT_SOURCE=str(peft_root),
    )
    proc = Proc("engine", lorafleet_argv("engine", "serve"), env, tmp_path)
    proc.start()
    try:
        wait_for(lambda: _ready(f"http://127.0.0.1:{port}/v1/health/ready"), 90, "engine ready")
    finally:
        proc.stop()
    [record] = _frozen(proc)
    assert record["component"] == "engine"
    assert record["objects"] > STARTUP_OBJECTS


def test_a_celery_worker_freezes_its_startup_heap_before_its_pool_forks(
    tmp_path: Path, redis_url: str
) -> None:
    env = _env(
        tmp_path,
        LORAFLEET_REDIS_URL=redis_url,
        LORAFLEET_DATABASE_URL=f"sqlite:///{tmp_path / 'unused.db'}",
    )
    proc = Proc("worker", worker_argv(f"heap-{os.getpid()}"), env, tmp_path)
    try:
        proc.start(WORKER_READY)
    finally:
        proc.stop()
    [record] = _frozen(proc)  # the parent, once: its pool processes inherit the frozen heap
    assert record["component"] == "worker"
    assert record["objects"] > STARTUP_OBJECTS
