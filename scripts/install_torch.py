"""Install the pinned torch into the running interpreter's environment, CPU build preferred.

``make venv``, ``make demo`` and ``.ci/run`` call it as ``.venv/bin/python
scripts/install_torch.py``. A bare ``pip install torch==X`` takes the CUDA build (GBs) from
PyPI on an ordinary machine, so the CPU wheel index is tried first; but some machines only
reach their package registries (a local ``+cpu`` wheel satisfies the pin there), so nothing
is assumed:

1. torch already importable at the pinned version: keep it (step 4's check still runs).
2. The index (``TORCH_INDEX_URL``, default PyTorch's CPU wheels) answers a quick probe:
   ``pip install torch==X --index-url <index>`` (short timeout).
3. Otherwise, or if that fails: ``pip install torch==X`` from the configured registries.
4. Verify in a fresh interpreter and warn loudly if a CUDA build landed without a GPU.

Exit status 0 once an importable torch at the pinned version is installed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

# The one pin for developer machines and CI; the Dockerfile's TORCH_VERSION must match
# (tests/test_install_torch.py checks).
TORCH_VERSION = "2.13.0"
CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
PROBE_TIMEOUT_S = 5.0
PIP_TIMEOUT_S = "20"

_INSPECT = (
    "import json, torch; print(json.dumps({'version': torch.__version__, "
    "'cuda': torch.version.cuda, 'hip': getattr(torch.version, 'hip', None), "
    "'gpu': torch.cuda.is_available()}))"
)


def installed_torch() -> dict | None:
    """What torch a fresh interpreter imports: version, CUDA/HIP build and GPU visibility,
    or ``None`` when torch is not importable."""
    result = subprocess.run([sys.executable, "-c", _INSPECT], capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def is_cpu_build(info: dict) -> bool:
    """True for a torch built without CUDA or ROCm."""
    return info["cuda"] is None and info["hip"] is None


def machine_has_nvidia_gpu() -> bool:
    """An NVIDIA driver is loaded (no torch needed to tell)."""
    return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None


def index_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """The index answers an HTTP request within ``timeout`` seconds (any status counts:
    a firewall that drops packets or a missing DNS name does not)."""
    probe = url.rstrip("/") + "/torch/"
    try:
        with urllib.request.urlopen(probe, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def pip_install(version: str, index_url: str | None) -> bool:
    """``pip install torch==<version>``, from ``index_url`` only when given; True on success."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", f"torch=={version}"]
    if index_url:
        cmd += ["--index-url", index_url, "--timeout", PIP_TIMEOUT_S, "--retries", "1"]
    print(f"install_torch: {' '.join(cmd[2:])}", flush=True)
    return subprocess.run(cmd).returncode == 0


def _matches(info: dict | None, version: str) -> bool:
    return info is not None and info["version"].split("+", 1)[0] == version


def _warn(message: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\ninstall_torch: WARNING: {message}\n{bar}\n", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--version", default=TORCH_VERSION, help="torch version to install")
    parser.add_argument(
        "--index-url",
        default=os.environ.get("TORCH_INDEX_URL", CPU_INDEX_URL),
        help="wheel index tried first (env TORCH_INDEX_URL; default PyTorch's CPU wheels)",
    )
    args = parser.parse_args(argv)

    info = installed_torch()
    if _matches(info, args.version):
        print(f"install_torch: torch {info['version']} already installed; keeping it")
        return _check_build(info, args.version)

    installed = False
    if index_reachable(args.index_url):
        installed = pip_install(args.version, args.index_url)
    else:
        print(f"install_torch: {args.index_url} is not reachable; using the configured index")
    if not installed:
        installed = pip_install(args.version, None)

    info = installed_torch()
    if not installed or not _matches(info, args.version):
        found = info["version"] if info else "none importable"
        print(f"install_torch: torch=={args.version} not installed ({found})", file=sys.stderr)
        return 1
    print(f"install_torch: torch {info['version']} installed")
    return _check_build(info, args.version)


def _check_build(info: dict, version: str) -> int:
    """Warn (loudly, but exit 0: it works, slowly and large) about a CUDA build on a machine
    without an NVIDIA GPU."""
    if not is_cpu_build(info) and not info["gpu"] and not machine_has_nvidia_gpu():
        _warn(
            f"torch {info['version']} is a CUDA build (GBs of CUDA libraries) and this "
            "machine has no NVIDIA GPU. For the CPU build: "
            f"pip install --force-reinstall 'torch=={version}' --index-url {CPU_INDEX_URL}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
