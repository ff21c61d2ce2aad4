"""Fixtures of the alias suite: the tiny model and ``canary``, a live registry on
PostgreSQL with acme/bot 1.0.0 and 1.1.0 and globex/bot 1.0.0, a real Celery worker and beat
relaying its outbox, and two engines (``engine-a``, ``engine-b``) following the refresh
stream with small caches (3 GPU slots, 4 CPU adapters)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from alias_fleet import AliasFleet, start_engine
from support.live_api import fresh_database, serve_registry
from support.processes import WORKER_READY, Proc, beat_argv, process_env, worker_argv
from support.services import flushed_redis_db, redis_db_url
from support.tiny import TINY_MODEL

from engine.tiny import init_tiny


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[AliasFleet]:
    root = tmp_path_factory.mktemp("canary")
    with ExitStack() as stack:
        redis_url = stack.enter_context(flushed_redis_db(redis_db_url(3)))
        url = stack.enter_context(fresh_database("postgresql", root))
        reg = stack.enter_context(serve_registry(url, root, redis_url=redis_url))
        reg.admin.register_base_model(
            TINY_MODEL, json.loads((model_dir / "config.json").read_text())
        )
        env = process_env(
            {
                "LORAFLEET_DATABASE_URL": url,
                "LORAFLEET_REDIS_URL": redis_url,
                "LORAFLEET_BLOB_URL": f"file://{reg.blob_root}",
                "LORAFLEET_HOME": str(root / "worker-home"),
                "LORAFLEET_RELAY_INTERVAL_S": "0.3",
                "LORAFLEET_LOG_FORMAT": "json",
            }
        )
        worker = Proc("worker", worker_argv(f"alias-{uuid.uuid4().hex[:6]}"), env, root)
        beat = Proc("beat", beat_argv(root / "beat-schedule"), env, root)
        stack.callback(worker.stop, 20)
        stack.callback(beat.stop, 10)
        worker.start(WORKER_READY, timeout=90)
        beat.start()
        fleet = AliasFleet(reg, model_dir, root, redis_url)
        for tenant in ("acme", "globex"):
            reg.admin.create_namespace(tenant, approval_policy="auto")
            fleet.readers[tenant] = reg.mint("reader", tenant, f"{tenant}-app")
        fleet.writer = reg.mint("writer", "acme", "acme-release")
        fleet.upload("acme", "bot", "1.0.0")
        fleet.upload("acme", "bot", "1.1.0")
        fleet.upload("globex", "bot", "1.0.0")
        for engine_id in ("engine-a", "engine-b"):
            fleet.engines.append(start_engine(fleet, stack, engine_id))
        fleet.synced()
        yield fleet
