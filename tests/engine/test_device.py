"""A device this machine cannot run on is a clear error before anything loads (issue 16
goal 6): the engine's setting, ``lorafleet engine serve`` and ``bench/engine.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.settings import EngineSettings, check_device

REPO = Path(__file__).resolve().parents[2]


def test_cpu_passes_and_auto_resolves() -> None:
    assert check_device("cpu") == "cpu"
    assert EngineSettings(device="cpu").resolved_device() == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert EngineSettings(device="auto").resolved_device() == expected


def test_not_a_device_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"LORAFLEET_ENGINE_DEVICE='gpu' is not a torch device"):
        EngineSettings(device="gpu").resolved_device()


def test_a_cuda_device_this_machine_lacks_says_so() -> None:
    # Without CUDA (CI): any cuda device is refused naming the build; with it: an index
    # past the visible GPUs is.
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA device"):
            check_device(f"cuda:{torch.cuda.device_count()}")
        assert check_device("cuda:0") == "cuda:0"
        return
    with pytest.raises(ValueError, match=r"--device='cuda': no CUDA device is available here"):
        check_device("cuda")
    with pytest.raises(ValueError, match="LORAFLEET_ENGINE_DEVICE='cuda:0': no CUDA device"):
        EngineSettings(device="cuda:0").resolved_device()


def test_bench_engine_refuses_a_missing_device_in_its_usage_line() -> None:
    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "engine.py"), "--quick", "--device", device],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "engine.py: error: --device=" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [("LORAFLEET_ENGINE_PREPACK", "maybe"), ("NIM_MAX_GPU_LORAS", "0")],
)
def test_engine_serve_names_a_bad_setting_in_one_line(
    tmp_path: Path, variable: str, value: str
) -> None:
    # It was a pydantic traceback with exit 1; now a usage error naming the variable, exit
    # 2, before anything loads (the model directory need not exist).
    from tests.support.processes import lorafleet_argv

    proc = subprocess.run(
        lorafleet_argv("engine", "serve", "--model-dir", str(tmp_path / "none")),
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: invalid setting: {variable}={value!r}: "), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
