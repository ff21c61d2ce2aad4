"""What an engine advertises and when it says ready: adapters it cannot serve are not
listed (the reason is in health and metrics), readiness waits for a successful
reconciliation, a served name the registry lacks stops the start, and an engine without a
live source says so."""

# Fixtures imported from serving_fixtures are used as parameters.
# ruff: noqa: F401, F811

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from serving_fixtures import (
    model_ids,
    peft_root,
    registry,
    registry_api,
    runtime_factory,
    upload,
    wait_until,
)
from structlog.testing import capture_logs
from support.factories import write_adapter_dir
from support.live_api import live_engine
from support.services import free_port
from support.tiny import engine_settings, model_spec

from engine.runtime import EngineRuntime, build_runtime
from engine.source import UnknownBaseModel


def complete(base_url: str, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "Hi", "max_tokens": 3, "temperature": 0}
    return httpx.post(f"{base_url}/v1/completions", json=body, timeout=30)


def health(base_url: str) -> httpx.Response:
    return httpx.get(f"{base_url}/v1/health/ready", timeout=10)


def assert_not_found(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "model_not_found",
        "model",
        "invalid_request_error",
    )
    for word in words:
        assert word in error["message"]


def registry_engine(tiny_model_dir: Path, tmp_path: Path, base_url: str, token: str, **kw):  # type: ignore[no-untyped-def]
    # Readiness, not caller auth, is under test here (tests/engine_tenancy has that).
    kw.setdefault("engine_auth", "none")
    settings = engine_settings(
        tiny_model_dir,
        peft_source=base_url,
        token=token,
        download_dir=tmp_path / "downloads",
        **kw,
    )
    return build_runtime(settings)


# -- item 5: what the engine cannot serve is not advertised ----------------------------------


def test_a_ready_adapter_above_the_engine_rank_is_not_listed_and_says_why(
    tiny_model_dir: Path, tmp_path: Path, registry: tuple
) -> None:
    base_url, admin, token = registry
    spec = model_spec(tiny_model_dir)
    assert upload(admin, tmp_path, spec, "small", seed=1)["status"] == "ready"
    assert upload(admin, tmp_path, spec, "big", seed=2, rank=128)["status"] == "ready"
    runtime = registry_engine(tiny_model_dir, tmp_path, base_url, token, max_lora_rank=16)
    with live_engine(runtime) as url:
        assert model_ids(url) == ["tiny-llama", "acme/small@1.0.0"]
        assert_not_found(complete(url, "acme/big@1.0.0"), "rank 128", "NIM_MAX_LORA_RANK=16")
        assert complete(url, "acme/small@1.0.0").status_code == 200
        ready = health(url)
        assert ready.status_code == 200
        [refused] = ready.json()["unservable"]
        assert (refused["model"], refused["code"]) == ("acme/big@1.0.0", "rank_too_large")
        assert "NIM_MAX_LORA_RANK=16" in refused["reason"]
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'lorafleet_engine_unservable_adapters{reason="rank_too_large"} 1.0' in metrics
        assert "lorafleet_engine_lora_servable 1.0" in metrics


def test_a_local_adapter_refused_at_load_is_404_and_leaves_the_listing(
    runtime_factory: Callable[..., EngineRuntime], tiny_model_dir: Path, peft_root: Path
) -> None:
    spec = model_spec(tiny_model_dir)
    write_adapter_dir(peft_root, "ok", spec, seed=1)
    write_adapter_dir(peft_root, "wide", spec, rank=32, seed=2)
    runtime = runtime_factory(tiny_model_dir, peft_source=str(peft_root), max_lora_rank=16)
    with live_engine(runtime) as url:
        assert "wide" in model_ids(url)  # a directory's rank is known only once it is read
        for _ in range(2):  # the first request finds out, later ones are told at once
            assert_not_found(complete(url, "wide"), "rank 32", "NIM_MAX_LORA_RANK=16")
        assert model_ids(url) == ["tiny-llama", "ok"]
        assert [u["code"] for u in health(url).json()["unservable"]] == ["rank_too_large"]
        runtime.reconciler.reconcile()  # same bytes: still refused
        assert "wide" not in model_ids(url)
        shutil.rmtree(peft_root / "wide")
        write_adapter_dir(peft_root, "wide", spec, rank=4, seed=3)  # new bytes: tried again
        runtime.reconciler.reconcile()
        assert complete(url, "wide").status_code == 200
        assert health(url).json()["unservable"] == []


# -- item 7: ready only once a reconciliation succeeded; a wrong served name stops the start --


def test_a_rejected_token_keeps_the_engine_not_ready_with_the_reason(
    tiny_model_dir: Path, tmp_path: Path, registry: tuple
) -> None:
    base_url, admin, _ = registry
    upload(admin, tmp_path, model_spec(tiny_model_dir), "small", seed=1)
    runtime = registry_engine(tiny_model_dir, tmp_path, base_url, "lft_not_a_token")
    with live_engine(runtime) as url:
        r = health(url)
        assert r.status_code == 503 and r.json()["message"] == "not ready"
        assert "401" in r.json()["reason"] and "LORAFLEET_TOKEN" in r.json()["reason"]
        assert model_ids(url) == ["tiny-llama"]


def test_not_ready_until_the_first_reconciliation_succeeds(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import store.api.server

    token = "lft_test_readiness_admin"
    state = tmp_path / "registry"
    state.mkdir()
    with registry_api(state, tiny_model_dir, admin_token=token) as (base_url, admin, _):
        upload(admin, tmp_path, model_spec(tiny_model_dir), "small", seed=1)
    runtime = registry_engine(tiny_model_dir, tmp_path, base_url, token)
    with live_engine(runtime) as url:
        r = health(url)
        assert r.status_code == 503 and "unreachable" in r.json()["reason"]
        port = urlparse(base_url).port
        monkeypatch.setattr(store.api.server, "_free_port", lambda: port)  # same address
        with registry_api(state, tiny_model_dir, admin_token=token):
            assert wait_until(lambda: health(url).status_code == 200, timeout=20)
            assert "acme/small@1.0.0" in model_ids(url)


def test_a_served_name_the_registry_lacks_is_an_error_at_start(
    tiny_model_dir: Path, tmp_path: Path, registry: tuple
) -> None:
    base_url, _, token = registry
    runtime = registry_engine(
        tiny_model_dir, tmp_path, base_url, token, served_model_name="tiny-lama"
    )
    with pytest.raises(UnknownBaseModel, match="tiny-lama"):
        runtime.start()
    runtime.stop()
    env = {
        **os.environ,
        "LORAFLEET_ENGINE_MODEL_DIR": str(tiny_model_dir),
        "LORAFLEET_ENGINE_DEVICE": "cpu",
        "LORAFLEET_ENGINE_PORT": str(free_port()),
        "NIM_PEFT_SOURCE": base_url,
        "NIM_SERVED_MODEL_NAME": "tiny-lama",
        "LORAFLEET_TOKEN": token,
    }
    done = subprocess.run(
        [sys.executable, "-c", "from lorafleet.cli import app; app()", "engine", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "tiny-lama" in done.stderr and "NIM_SERVED_MODEL_NAME" in done.stderr
    assert "Traceback" not in done.stderr


# -- item 8: no live source is said at start -------------------------------------------------


def test_an_engine_without_a_live_source_warns_at_start(
    runtime_factory: Callable[..., EngineRuntime], tiny_model_dir: Path, peft_root: Path
) -> None:
    static = runtime_factory(tiny_model_dir, peft_source=str(peft_root))
    with capture_logs() as logs:
        static.start()
    [warning] = [e for e in logs if e["event"] == "engine_no_live_source"]
    assert warning["log_level"] == "warning"
    assert "LORAFLEET_REDIS_URL" in warning["hint"]
    assert "NIM_PEFT_REFRESH_INTERVAL" in warning["hint"]
    live = runtime_factory(tiny_model_dir, peft_source=str(peft_root), peft_refresh_interval=60)
    with capture_logs() as logs:
        live.start()
    assert not [e for e in logs if e["event"] == "engine_no_live_source"]


def test_readme_says_what_the_engine_does_without_a_live_source() -> None:
    from engine.settings import EngineSettings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = {
        line.split("|")[1].strip(): line for line in readme.splitlines() if line.startswith("| `")
    }
    defaults = EngineSettings.model_fields
    assert (
        defaults["redis_url"].default is None and defaults["peft_refresh_interval"].default is None
    )
    assert "engine: none" in rows["`LORAFLEET_REDIS_URL`"]
    interval = rows["`NIM_PEFT_REFRESH_INTERVAL`"]
    assert "only at start" in interval and "engine_no_live_source" in interval
