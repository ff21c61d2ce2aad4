"""Fixtures for the serving side: a NIM local PEFT directory, built engine runtimes, and a
seeded live registry for them (the tiny model's settings and adapters are in
``support.tiny`` and ``support.factories``, the live engine in ``support.live_api``).

Test modules import what they use (``from serving_fixtures import ...``; pytest puts this
directory on ``sys.path``); fixtures imported into a test module are found by pytest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.factories import write_adapter_dir
from support.live_api import serve_registry
from support.tiny import engine_settings

from engine.runtime import EngineRuntime, build_runtime
from store.formats import BaseModelSpec


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05
) -> bool:
    """Poll ``predicate`` until true or ``timeout``; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def model_ids(base_url: str) -> list[str]:
    """Ids listed by ``GET /v1/models``."""
    return [m["id"] for m in httpx.get(f"{base_url}/v1/models", timeout=10).json()["data"]]


@pytest.fixture
def peft_root(tmp_path: Path) -> Path:
    """An empty NIM local PEFT directory."""
    root = tmp_path / "loras"
    root.mkdir()
    return root


@pytest.fixture
def runtime_factory() -> Iterator[Callable[..., EngineRuntime]]:
    """``runtime_factory(model_dir, **settings) -> EngineRuntime``; stopped at teardown if
    the test started it without a live server."""
    made: list[EngineRuntime] = []

    def make(model_dir: Path, **overrides: Any) -> EngineRuntime:
        runtime = build_runtime(engine_settings(model_dir, **overrides))
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        if runtime.started:
            runtime.stop()


@contextmanager
def registry_api(tmp_path: Path, model_dir: Path, *, admin_token: str | None = None):  # type: ignore[no-untyped-def]
    """A live registry API (SQLite under ``tmp_path``, filesystem blobs) with namespace
    ``acme`` (auto approval) and base model ``tiny-llama``; yields ``(base_url, admin
    client, admin token)``. Entering it again with the same ``tmp_path`` and token serves
    the same state."""
    from store.client import ApiError
    from store.db import upgrade

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade(url)
    with serve_registry(url, tmp_path, admin_token=admin_token) as live:
        admin = live.admin
        try:
            admin.create_namespace("acme", approval_policy="auto")
            admin.register_base_model(
                "tiny-llama", json.loads((model_dir / "config.json").read_text())
            )
        except ApiError as exc:
            if exc.status != 409:  # already there: a second entry into the same state
                raise
        yield live.base_url, admin, live.admin_token


@pytest.fixture
def registry(tmp_path: Path, tiny_model_dir: Path) -> Iterator[tuple[str, Any, str]]:
    """``registry_api`` for one test."""
    with registry_api(tmp_path, tiny_model_dir) as live:
        yield live


def upload(
    admin: Any, tmp_path: Path, spec: BaseModelSpec, name: str, seed: int, rank: int = 4
) -> dict:
    """Upload a ``strong_adapter`` as ``acme/<name>@1.0.0`` for ``tiny-llama``."""
    src = write_adapter_dir(tmp_path / "uploads", name, spec, rank=rank, seed=seed)
    return admin.upload_adapter(
        src, namespace="acme", name=name, version="1.0.0", base_model="tiny-llama"
    )
