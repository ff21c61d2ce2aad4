"""Refresh: local-directory rescans, Redis refresh events, and registry reconciliation."""

# Fixtures imported from serving_fixtures are used as parameters.
# ruff: noqa: F401, F811

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from serving_fixtures import model_ids, registry, upload, wait_until
from support.factories import write_adapter_dir
from support.live_api import live_engine
from support.tiny import engine_settings, model_spec

from engine.runtime import build_runtime
from events.models import FleetRefresh
from events.streams import REFRESH_STREAM


def completes(base_url: str, model: str) -> int:
    body = {"model": model, "prompt": "Hi", "max_tokens": 4, "temperature": 0}
    return httpx.post(f"{base_url}/v1/completions", json=body, timeout=30).status_code


def greedy(base_url: str, model: str) -> str:
    body = {"model": model, "prompt": "Hi", "max_tokens": 8, "temperature": 0}
    return httpx.post(f"{base_url}/v1/completions", json=body, timeout=30).json()["choices"][0][
        "text"
    ]


def publish(
    redis_url: str, action: str, adapter: str, base_model: str = "tiny-llama", generation: int = 1
) -> None:
    event = FleetRefresh(
        action=action,
        adapter_id=f"id-{adapter}",
        adapter=adapter,
        base_model=base_model,
        generation=generation,
    )
    client = redis.Redis.from_url(redis_url)
    client.xadd(REFRESH_STREAM, event.encode())
    client.close()


def test_local_directory_is_rescanned_on_the_interval(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "loras"
    root.mkdir()
    spec = model_spec(tiny_model_dir)
    write_adapter_dir(root, "first", spec, seed=1)
    runtime = build_runtime(
        engine_settings(tiny_model_dir, peft_source=str(root), peft_refresh_interval=0.3)
    )
    with live_engine(runtime) as url:
        assert model_ids(url) == ["tiny-llama", "first"]
        write_adapter_dir(root, "new-lora", spec, seed=2)
        assert wait_until(lambda: "new-lora" in model_ids(url), timeout=10)
        assert completes(url, "new-lora") == 200
        shutil.rmtree(root / "new-lora")
        assert wait_until(lambda: completes(url, "new-lora") == 404, timeout=10)
        assert "new-lora" not in runtime.cache.residency()


def test_refresh_events_load_and_evict_without_restart(
    tiny_model_dir: Path, tmp_path: Path, redis_url: str
) -> None:
    root = tmp_path / "loras"
    root.mkdir()
    spec = model_spec(tiny_model_dir)
    # No refresh interval: only events make this engine look at its source again.
    runtime = build_runtime(
        engine_settings(tiny_model_dir, peft_source=str(root), redis_url=redis_url)
    )
    with live_engine(runtime) as url:
        assert wait_until(
            lambda: runtime.subscriber is not None and runtime.subscriber.last_id is not None
        )
        write_adapter_dir(root, "hot", spec, seed=3)
        publish(redis_url, "load", "hot", base_model="another-model")
        assert not wait_until(lambda: "hot" in model_ids(url), timeout=1.0)  # not our base model
        publish(redis_url, "load", "hot")
        assert wait_until(lambda: "hot" in model_ids(url), timeout=10)
        assert wait_until(lambda: "hot" in runtime.cache.cpu.resident(), timeout=10)  # prefetched
        assert greedy(url, "hot") != greedy(url, "tiny-llama")
        shutil.rmtree(root / "hot")
        publish(redis_url, "evict", "hot", generation=2)
        assert wait_until(lambda: completes(url, "hot") == 404, timeout=10)
        assert "hot" not in runtime.cache.residency()


# -- the registry as the PEFT source ---------------------------------------------------------


def test_registry_source_converges_at_start_and_follows_events(
    tiny_model_dir: Path, tmp_path: Path, redis_url: str, registry: tuple
) -> None:
    base_url, admin, token = registry
    spec = model_spec(tiny_model_dir)
    early = upload(admin, tmp_path, spec, "early", seed=4)
    assert early["status"] == "ready"
    # Published before the engine existed: it must converge through reconciliation.
    publish(redis_url, "load", "acme/early@1.0.0")
    settings = engine_settings(
        tiny_model_dir,
        peft_source=base_url,
        token=token,
        redis_url=redis_url,
        download_dir=tmp_path / "downloads",
        engine_auth="none",  # refresh, not caller auth, is under test (tests/engine_tenancy)
    )
    runtime = build_runtime(settings)
    with live_engine(runtime) as url:
        assert "acme/early@1.0.0" in model_ids(url)
        assert greedy(url, "acme/early@1.0.0") != greedy(url, "tiny-llama")
        assert wait_until(
            lambda: runtime.subscriber is not None and runtime.subscriber.last_id is not None
        )

        late = upload(admin, tmp_path, spec, "late", seed=5)
        publish(redis_url, "load", "acme/late@1.0.0", generation=2)
        assert wait_until(lambda: "acme/late@1.0.0" in model_ids(url), timeout=10)
        assert completes(url, "acme/late@1.0.0") == 200

        admin.set_status(late["id"], "archived", reason="superseded")
        publish(redis_url, "evict", "acme/late@1.0.0", generation=3)
        assert wait_until(lambda: completes(url, "acme/late@1.0.0") == 404, timeout=10)
        assert runtime.catalog.generation is not None and runtime.catalog.generation >= 2

        # Stale events (at or below the catalog's generation) re-list nothing and undo
        # nothing: a backlog of old hints costs no listing and never revives an archived
        # version; the first newer event costs exactly one.
        before = runtime.reconciler.reconciliations
        for _ in range(5):
            publish(redis_url, "load", "acme/late@1.0.0", generation=1)
            publish(redis_url, "evict", "acme/early@1.0.0", generation=1)
        publish(redis_url, "load", "acme/early@1.0.0", generation=10_000)
        assert wait_until(lambda: runtime.reconciler.reconciliations > before, timeout=10)
        assert runtime.reconciler.reconciliations == before + 1
        assert completes(url, "acme/late@1.0.0") == 404
        assert completes(url, "acme/early@1.0.0") == 200
