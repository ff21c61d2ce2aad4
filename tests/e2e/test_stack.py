"""``lorafleet up``: the embedded stack comes up healthy with per-component log prefixes, and
goes away completely on Ctrl-C, and even when its supervisor is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support.services import free_port


def _processes_of(home: Path) -> list[int]:
    """Every live process started for the stack in ``home`` (they all carry LORAFLEET_HOME)."""
    marker = f"LORAFLEET_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                if (entry / "stat").read_text().split()[2] != "Z":
                    found.append(int(entry.name))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return found


def _start_up(
    home: Path, api_port: int, engine_port: int, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``lorafleet up`` (in ``env``, default this process's environment) with its terminal
    output in ``home/../up.out`` (a file, not a pipe nobody reads: a full pipe would stall
    the stack)."""
    code = "from lorafleet.cli import app; app()"
    args = [
        "up",
        "--home",
        str(home),
        "--api-port",
        str(api_port),
        "--engine-port",
        str(engine_port),
    ]
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / "up.out", "w") as out:
        return subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )


def _wait_healthy(
    proc: subprocess.Popen[str], out: Path, *urls: str, timeout: float = 150.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"lorafleet up exited early:\n{out.read_text()[-3000:]}")
        try:
            if all(httpx.get(u, timeout=2).status_code == 200 for u in urls):
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "stack not healthy in time"
        time.sleep(0.5)


def _wait_gone(home: Path, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _processes_of(home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.slow
def test_up_serves_and_ctrl_c_stops_every_component(tmp_path: Path) -> None:
    home = tmp_path / "lf"
    api_port, engine_port = free_port(), free_port()
    proc = _start_up(home, api_port, engine_port)
    try:
        _wait_healthy(
            proc,
            tmp_path / "up.out",
            f"http://127.0.0.1:{api_port}/v1/health/ready",
            f"http://127.0.0.1:{engine_port}/v1/health/ready",
        )
        models = httpx.get(f"http://127.0.0.1:{engine_port}/v1/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["tiny-llama"]
        time.sleep(6)  # past the bridge's first reclaim pass and a few beat ticks
        still_up = proc.poll() is None
        assert still_up, (tmp_path / "up.out").read_text()[-3000:]
        assert len(_processes_of(home)) >= 6
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = (tmp_path / "up.out").read_text()
    assert proc.returncode == 0, output[-3000:]
    assert _wait_gone(home) == []
    for name in ("redis", "api", "bridge", "worker", "beat", "engine"):
        assert f"\n{name:<7}| " in output, f"no prefixed lines from {name}"
        assert (home / "logs" / f"{name}.log").stat().st_size > 0
    assert "lorafleet is up" in output and "stopping" in output


@pytest.mark.slow
def test_killing_the_supervisor_leaves_no_orphans(tmp_path: Path) -> None:
    home = tmp_path / "lf"
    api_port, engine_port = free_port(), free_port()
    proc = _start_up(home, api_port, engine_port)
    try:
        _wait_healthy(proc, tmp_path / "up.out", f"http://127.0.0.1:{engine_port}/v1/health/ready")
        assert len(_processes_of(home)) >= 6
        proc.kill()  # SIGKILL: no chance to clean up; the children must notice on their own
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = _wait_gone(home)
    for pid in left:  # never leave them behind for the next test, but fail on them
        os.kill(pid, signal.SIGKILL)
    assert left == []


def _environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if b"=" in item)


def _engine_pid(home: Path) -> int:
    for pid in _processes_of(home):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"engine" in argv and b"serve" in argv:
            return pid
    raise AssertionError("no engine process found")


def _capacity(metrics: str, level: str) -> float:
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("lorafleet_engine_lora_capacity") and f'level="{level}"' in line
    )
    return float(line.split()[-1])


def _registered_base_model(home: Path) -> None:
    """Give ``up``'s default home its tiny model, already registered as a base model (an
    engine refuses to serve a name the registry lacks); ``up`` reuses both."""
    import json

    from sqlmodel import Session

    from engine.tiny import init_tiny
    from store import tenancy
    from store.db import make_engine, upgrade

    model_dir = home / "models" / "tiny-llama"
    init_tiny(model_dir)
    url = f"sqlite:///{home / 'lorafleet.db'}"
    upgrade(url)
    engine = make_engine(url)
    with Session(engine) as session:
        config = json.loads((model_dir / "config.json").read_text())
        tenancy.register_base_model(session, "tiny-llama", config, actor="test")
    engine.dispose()


@pytest.mark.slow
def test_up_hands_the_users_engine_limits_to_the_engine(tmp_path: Path) -> None:
    home = tmp_path / "lf"
    _registered_base_model(home)
    api_port, engine_port = free_port(), free_port()
    env = {**os.environ, "NIM_MAX_LORA_RANK": "48", "NIM_MAX_GPU_LORAS": "3"}
    env.pop("NIM_MAX_CPU_LORAS", None)  # unset: the engine's own default (16) applies
    proc = _start_up(home, api_port, engine_port, env)
    try:
        engine = f"http://127.0.0.1:{engine_port}"
        _wait_healthy(proc, tmp_path / "up.out", f"{engine}/v1/health/ready")
        environ = _environ_of(_engine_pid(home))
        assert (environ["NIM_MAX_LORA_RANK"], environ["NIM_MAX_GPU_LORAS"]) == ("48", "3")
        assert "NIM_MAX_CPU_LORAS" not in environ
        metrics = httpx.get(f"{engine}/metrics", timeout=5).text
        assert (_capacity(metrics, "gpu"), _capacity(metrics, "cpu")) == (3, 16)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert _wait_gone(home) == []
