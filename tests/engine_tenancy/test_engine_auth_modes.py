"""The engine's auth modes and a registry outage: ``none`` is loud, ``registry`` without a
registry refuses to start, cached tokens survive an outage, uncached ones get 503."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import openai
import pytest
from support.factories import write_adapter_dir
from support.live_api import fresh_database, live_engine, serve_registry
from support.tiny import TINY_MODEL, engine_settings, model_spec
from tenancy_fixtures import adapter_of

from engine.runtime import build_runtime


def test_auth_none_serves_everyone_and_says_so(model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "loras"
    write_adapter_dir(root, "math", model_spec(model_dir), seed=1)
    settings = engine_settings(model_dir, peft_source=str(root))
    assert settings.resolved_auth() == "none"  # a local directory holds no tenants
    with live_engine(build_runtime(settings)) as url:
        ready = httpx.get(f"{url}/v1/health/ready").json()
        assert ready["auth"] == "none" and "LORAFLEET_ENGINE_AUTH=none" in ready["warning"]
        with openai.OpenAI(base_url=f"{url}/v1", api_key="anything", max_retries=0) as client:
            assert sorted(m.id for m in client.models.list()) == ["math", TINY_MODEL]
        assert httpx.get(f"{url}/v1/models").status_code == 200  # no header at all


def test_auth_registry_needs_a_registry_source(model_dir: Path, tmp_path: Path) -> None:
    settings = engine_settings(model_dir, peft_source=str(tmp_path), engine_auth="registry")
    with pytest.raises(ValueError, match="LORAFLEET_ENGINE_AUTH=registry needs NIM_PEFT_SOURCE"):
        build_runtime(settings)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_registry_outage_keeps_cached_tokens_and_refuses_uncached_with_503(
    model_dir: Path, tmp_path: Path, kind: str
) -> None:
    with fresh_database(kind, tmp_path) as url:
        reg_cm = serve_registry(url, tmp_path, admin_token="lft_outage-admin")
        reg = reg_cm.__enter__()
        try:
            reg.admin.register_base_model(
                TINY_MODEL, json.loads((model_dir / "config.json").read_text())
            )
            reg.admin.create_namespace("acme", approval_policy="auto")
            src = write_adapter_dir(tmp_path / "up", "acme", model_spec(model_dir), seed=3)
            reg.admin.upload_adapter(
                src, namespace="acme", name="bot", version="1.0.0", base_model=TINY_MODEL
            )
            cached = reg.mint("reader", "acme", "cached")
            uncached = reg.mint("reader", "acme", "uncached")
            settings = engine_settings(
                model_dir,
                peft_source=reg.base_url,
                token=reg.mint("reader", None, "engine"),
                download_dir=tmp_path / "downloads",
                auth_cache_seconds=0.2,  # so the outage forces a re-check
            )
            runtime = build_runtime(settings)
            engine = live_engine(runtime)
            engine_url = engine.__enter__()
        except BaseException:
            reg_cm.__exit__(None, None, None)
            raise
        try:
            with openai.OpenAI(
                base_url=f"{engine_url}/v1", api_key=cached, max_retries=0
            ) as client:
                assert adapter_of("acme") in [m.id for m in client.models.list()]
                # Loaded into the CPU cache while the registry is up (its bytes come from it).
                client.completions.create(model=adapter_of("acme"), prompt="Hi", max_tokens=1)
                reg_cm.__exit__(None, None, None)  # the registry goes away
                time.sleep(0.3)  # the cached answer is past its freshness
                out = client.completions.create(
                    model=adapter_of("acme"), prompt="Hi", max_tokens=3, temperature=0
                )
                assert out.choices[0].text
            with openai.OpenAI(
                base_url=f"{engine_url}/v1", api_key=uncached, max_retries=0
            ) as other:
                with pytest.raises(openai.InternalServerError) as refused:
                    other.models.list()
            assert refused.value.status_code == 503
            assert refused.value.response.json()["error"]["code"] == "auth_unavailable"
        finally:
            engine.__exit__(None, None, None)
