"""How lorafleet gets installed: CPU torch through ``scripts/install_torch.py`` on every path
(``make venv``, ``make demo``, ``.ci/run``), and package metadata setuptools accepts without
deprecation warnings."""

from __future__ import annotations

import http.server
import importlib.util
import os
import re
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install_torch.py"


@pytest.fixture(scope="module")
def install_torch() -> ModuleType:
    spec = importlib.util.spec_from_file_location("install_torch", SCRIPT)
    assert spec and spec.loader, f"{SCRIPT} is missing"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def empty_index() -> Iterator[str]:
    """A real HTTP server answering 404 to everything: a reachable index without torch."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _recipe(makefile: str, target: str) -> str:
    match = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, flags=re.MULTILINE)
    assert match, f"Makefile has no {target} recipe"
    return match.group(1)


def test_make_venv_demo_and_ci_install_torch_through_the_script() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("venv", "demo"):
        recipe = _recipe(makefile, target)
        assert "scripts/install_torch.py" in recipe, target
        assert "pip install -q torch" not in recipe, f"{target} pins torch past the script"
        # torch before lorafleet, whose bare `torch` requirement would pull CUDA wheels.
        assert recipe.index("install_torch.py") < recipe.index("pip install -q -e"), target
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make venv$", ci, flags=re.MULTILINE), ".ci/run must install as make venv"
    assert "torch==" not in ci


def test_dockerfile_pins_the_scripts_torch_version(install_torch: ModuleType) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    [pin] = re.findall(r"^ARG TORCH_VERSION=(\S+)", dockerfile, flags=re.MULTILINE)
    assert pin == install_torch.TORCH_VERSION
    assert install_torch.CPU_INDEX_URL in dockerfile


def test_install_torch_keeps_a_torch_already_at_the_pin() -> None:
    """This venv's torch is the pinned CPU build: nothing is downloaded, exit 0."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "already installed; keeping it" in result.stdout
    assert "pip install" not in result.stdout


def test_index_probe_tells_a_dead_index_from_a_live_one(
    install_torch: ModuleType, empty_index: str
) -> None:
    started = time.monotonic()
    assert not install_torch.index_reachable(f"http://127.0.0.1:{_closed_port()}/whl/cpu")
    assert time.monotonic() - started < install_torch.PROBE_TIMEOUT_S
    assert install_torch.index_reachable(empty_index)  # a 404 still means it answers


@pytest.mark.slow
def test_install_torch_tries_the_index_then_the_registries_then_fails_loudly(
    tmp_path: Path, empty_index: str
) -> None:
    """In a fresh venv without torch, a version no index has: the reachable CPU index is
    tried first, then the configured registries, and the script exits 1 naming the pin."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    result = subprocess.run(
        [str(venv / "bin" / "python"), str(SCRIPT), "--version", "0.0.1"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TORCH_INDEX_URL": empty_index},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    attempts = [line for line in result.stdout.splitlines() if "pip install" in line]
    assert attempts == [
        f"install_torch: pip install -q torch==0.0.1 --index-url {empty_index} "
        "--timeout 20 --retries 1",
        "install_torch: pip install -q torch==0.0.1",
    ]
    assert "torch==0.0.1 not installed (none importable)" in result.stderr


def test_package_metadata_has_an_spdx_license_and_no_deprecation_warnings(tmp_path: Path) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in pyproject["build-system"]["requires"]
    # The same hook pip runs on `pip install .`: setuptools warns here or nowhere.
    code = (
        "import sys; from setuptools import build_meta; "
        "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))"
    )
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "deprecat" not in (result.stdout + result.stderr).lower(), result.stderr
    metadata = (tmp_path / "lorafleet-0.1.0.dist-info" / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
