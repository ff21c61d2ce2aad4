"""Fixtures of the engine tenancy suite: a live registry (SQLite or PostgreSQL) with three
tenants, each owning one ready adapter, and an engine serving them with
``LORAFLEET_ENGINE_AUTH=registry`` (the default for a registry source)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.factories import write_adapter_dir
from support.live_api import LiveRegistry, fresh_database, live_engine, serve_registry
from support.services import flushed_redis_db, redis_db_url
from support.tiny import TINY_MODEL, engine_settings, model_spec
from tenancy_fixtures import TENANTS, Fleet

from engine.runtime import build_runtime
from engine.tiny import init_tiny


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def tenancy_redis() -> Iterator[str]:
    with flushed_redis_db(redis_db_url(1)) as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fleet(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model_dir: Path,
    tenancy_redis: str,
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp(f"fleet-{request.param}")
    with (
        fresh_database(request.param, root) as url,
        serve_registry(url, root) as reg,
    ):
        yield from _fleet(reg, root, model_dir, tenancy_redis)


def _fleet(reg: LiveRegistry, root: Path, model_dir: Path, redis_url: str) -> Iterator[Fleet]:
    reg.admin.register_base_model(TINY_MODEL, json.loads((model_dir / "config.json").read_text()))
    spec = model_spec(model_dir)
    for i, tenant in enumerate(TENANTS):
        reg.admin.create_namespace(tenant, approval_policy="auto")
        src = write_adapter_dir(root / "uploads", tenant, spec, seed=i + 1)
        entity = reg.admin.upload_adapter(
            src, namespace=tenant, name="bot", version="1.0.0", base_model=TINY_MODEL
        )
        assert entity["status"] == "ready", entity
    settings = engine_settings(
        model_dir,
        peft_source=reg.base_url,
        token=reg.mint("reader", None, "engine"),
        redis_url=redis_url,
        download_dir=root / "downloads",
    )
    assert settings.resolved_auth() == "registry"  # the default for a registry source
    runtime = build_runtime(settings)
    with live_engine(runtime) as url:
        fleet = Fleet(reg, runtime, url, redis_url)
        fleet.readers = {t: reg.mint("reader", t, f"{t}-app") for t in TENANTS}
        assert runtime.revocations is not None
        yield fleet
