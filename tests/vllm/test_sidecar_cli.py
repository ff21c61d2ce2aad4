"""The vLLM sidecar's command line, without a vLLM (runs in ``make test``): a misconfiguration
is an error before anything is pulled, and a vLLM that is not there fails a one-shot pull
with a message naming it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support.live_api import LiveRegistry, fresh_database, serve_registry
from support.processes import lorafleet_argv, process_env
from support.services import free_port
from support.tiny import tiny_hf_config


def _pull(live: LiveRegistry, dest: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = lorafleet_argv("pull", "--dest", str(dest), "--base-model", "tiny", *args)
    env = process_env({"LORAFLEET_API_URL": live.base_url, "LORAFLEET_TOKEN": live.admin_token})
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def test_vllm_url_without_model_is_refused_and_pulls_nothing(tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path) as url, serve_registry(url, tmp_path / "r") as live:
        live.admin.register_base_model("tiny", tiny_hf_config())
        done = _pull(live, tmp_path / "loras", "--vllm-url", "http://127.0.0.1:9")
        assert done.returncode == 2
        assert "--vllm-model" in done.stderr
        assert not (tmp_path / "loras").exists()

        down = f"http://127.0.0.1:{free_port()}"
        done = _pull(live, tmp_path / "loras", "--vllm-url", down, "--vllm-model", "m")
        assert done.returncode == 1
        assert f"vLLM at {down} is unreachable" in done.stderr
