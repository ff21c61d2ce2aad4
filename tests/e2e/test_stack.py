"""``lorafleet up``: the embedded stack comes up healthy with per-component log prefixes, and
goes away completely on Ctrl-C, from a script's background job too, and even when its
supervisor is killed outright; a second shell reaches it through ``<home>/stack.json`` with
no exports, and the banner's next commands work as printed."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
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


UP = [sys.executable, "-c", "from lorafleet.cli import app; app()", "up"]


def _start_up(
    home: Path,
    api_port: int,
    engine_port: int,
    env: dict[str, str] | None = None,
    *,
    default_home: bool = False,
) -> subprocess.Popen[str]:
    """``lorafleet up`` (in ``env``, default this process's environment) with its terminal
    output in ``home/../up.out`` (a file, not a pipe nobody reads: a full pipe would stall
    the stack). With ``default_home``, run in ``home``'s parent without ``--home``."""
    args = ["--api-port", str(api_port), "--engine-port", str(engine_port)]
    if not default_home:
        args = ["--home", str(home), *args]
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / "up.out", "w") as out:
        return subprocess.Popen(
            [*UP, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=home.parent if default_home else None,
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
        models = httpx.get(
            f"http://127.0.0.1:{engine_port}/v1/models", headers=_bearer(home), timeout=5
        ).json()
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
    for name in ("redis", "api", "bridge", "worker", "beat", "webhook", "engine"):
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
        session.commit()
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


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _without_lorafleet_variables() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}


def _second_shell(tmp_path: Path) -> dict[str, str]:
    """A fresh login's environment: HOME and PATH (this checkout's scripts, curl), nothing
    else, so nothing but ``.lorafleet/stack.json`` says where the stack is."""
    user_home = tmp_path / "user"
    user_home.mkdir(exist_ok=True)
    return {"HOME": str(user_home), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}


def _shell(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _wait_up(proc: subprocess.Popen[str], out: Path, timeout: float = 150.0) -> None:
    """Wait for ``up``'s banner: everything healthy, registered and ``stack.json`` written."""
    deadline = time.monotonic() + timeout
    while not out.exists() or "Ctrl-C to stop" not in out.read_text():
        if proc.poll() is not None:
            pytest.fail(f"lorafleet up exited early:\n{out.read_text()[-3000:]}")
        assert time.monotonic() < deadline, "lorafleet up not up in time"
        time.sleep(0.5)


def _bearer(home: Path) -> dict[str, str]:
    """The stack's admin token as a header: its engine checks registry tokens."""
    return {"Authorization": f"Bearer {(home / 'admin-token').read_text().strip()}"}


def _next_commands(output: str) -> list[str]:
    lines = output.split("Next, in another shell:\n", 1)[1].splitlines()
    return [line.strip() for line in lines[:3]]


@pytest.mark.slow
def test_a_second_shell_needs_no_exports_and_the_banner_commands_work_as_printed(
    tmp_path: Path,
) -> None:
    home = tmp_path / ".lorafleet"
    api_port, engine_port = free_port(), free_port()
    proc = _start_up(home, api_port, engine_port, _without_lorafleet_variables(), default_home=True)
    shell = _second_shell(tmp_path)
    engine = f"http://127.0.0.1:{engine_port}"
    try:
        _wait_up(proc, tmp_path / "up.out")
        described = json.loads((home / "stack.json").read_text())
        assert described["api_url"] == f"http://127.0.0.1:{api_port}"
        assert described["engine_url"] == engine
        assert described["redis_url"].startswith("redis://127.0.0.1:")
        assert described["token_file"] == str(home.resolve() / "admin-token")

        listed = _shell("lorafleet adapters list --json", tmp_path, shell)
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["data"] == []
        namespaces = _shell("lorafleet namespaces list --json", tmp_path, shell)
        assert [n["name"] for n in json.loads(namespaces.stdout)["data"]] == ["default"]

        # The banner's three commands: upload the example, the next step, ask the engine.
        upload, second, curl = _next_commands((tmp_path / "up.out").read_text())
        for line in (upload, second):
            done = _shell(line, tmp_path, shell)
            assert done.returncode == 0, f"{line}\n{done.stdout}{done.stderr}"
        deadline = time.monotonic() + 60
        while "default/example@1.0.0" not in {
            m["id"]
            for m in httpx.get(f"{engine}/v1/models", headers=_bearer(home), timeout=5).json()[
                "data"
            ]
        }:
            assert time.monotonic() < deadline, "the example adapter never reached the engine"
            time.sleep(0.5)
        answer = _shell(curl, tmp_path, shell)
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout)["model"] == "default/example@1.0.0"

        # An events-only tool finds the stack's Redis too: the announcement is ingested.
        announce = (
            "lorafleet events publish-job-completed --job-id second-shell "
            "--output-model default/announced@1.0.0 --base-model tiny-llama "
            f"--output-dir .lorafleet/examples/example-lora --upload-to {home.as_uri()}/artifacts"
        )
        published = _shell(announce, tmp_path, shell)
        assert published.returncode == 0, published.stderr
        deadline = time.monotonic() + 60
        while (
            status := _shell("lorafleet events status second-shell", tmp_path, shell)
        ).returncode:
            # 1: the bridge has not read it yet; 4: in flight; 3 (failed) ends the test.
            assert status.returncode in (1, 4), status.stdout + status.stderr
            assert time.monotonic() < deadline, status.stdout
            time.sleep(0.5)
        assert "done" in status.stdout
    finally:
        _stop(proc)
    assert proc.returncode == 0, (tmp_path / "up.out").read_text()[-3000:]
    assert not (home / "stack.json").exists()
    assert _wait_gone(home.resolve()) == []


@pytest.mark.slow
def test_up_in_a_scripts_background_stops_on_sigint_and_honours_the_admin_token(
    tmp_path: Path,
) -> None:
    home = tmp_path / "lf"
    api_port, engine_port = free_port(), free_port()
    up = shlex.join([*UP, "--home", str(home), "--api-port", str(api_port)])
    up += f" --engine-port {engine_port}"
    go = tmp_path / "go"
    # A non-interactive shell starts background jobs with SIGINT ignored.
    script = (
        f"{up} > {tmp_path / 'up.out'} 2>&1 & pid=$!; echo $pid > {tmp_path / 'up.pid'}; "
        f"while [ ! -e {go} ]; do sleep 0.2; done; "
        'kill -INT $pid; wait $pid; echo "up exited $?"'
    )
    env = {**_without_lorafleet_variables(), "LORAFLEET_ADMIN_TOKEN": "lft_from_my_environment"}
    script_proc = subprocess.Popen(
        ["bash", "-c", script], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        _wait_up(script_proc, tmp_path / "up.out")
        headers = {"Authorization": "Bearer lft_from_my_environment"}
        answer = httpx.get(f"http://127.0.0.1:{api_port}/v1/namespaces", headers=headers)
        assert answer.status_code == 200, answer.text
        assert not (home / "admin-token").exists()
        assert json.loads((home / "stack.json").read_text())["token_file"] is None
        go.touch()
        output, _ = script_proc.communicate(timeout=60)
    finally:
        go.touch()
        if script_proc.poll() is None:
            # An `up` that ignored SIGINT, and its components: never leave them behind.
            up_pid = tmp_path / "up.pid"
            for pid in [int(up_pid.read_text()), *_processes_of(home)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            script_proc.kill()
            script_proc.wait()
    assert "up exited 0" in output, (tmp_path / "up.out").read_text()[-3000:]
    assert "stopping" in (tmp_path / "up.out").read_text()
    assert _wait_gone(home) == []
    assert not (home / "stack.json").exists()


_SERVE = """
import os, signal, subprocess, sys, time
name, record = sys.argv[1], sys.argv[2]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
def stop(*_):
    with open(record, "a") as fh:
        fh.write(name + "\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print(f"{name} ready. child {child.pid}", flush=True)
while True:
    time.sleep(0.1)
"""


def test_supervisor_waits_for_ready_lines_and_stops_services_before_infrastructure(
    tmp_path: Path,
) -> None:
    from lorafleet.supervisor import Component, Supervisor, SupervisorError

    record = tmp_path / "stopped"
    supervisor = Supervisor(tmp_path / "logs", health_timeout=30, stop_timeout=5)
    try:
        for name, tier in (("infra", 0), ("svc", 1)):
            argv = [sys.executable, "-c", _SERVE, name, str(record)]
            supervisor.launch(Component(name, argv, ready_line=r"ready\.", tier=tier))
        supervisor.check_alive()
        children = [int(c.tail().split()[-1]) for c in supervisor.components]
        with pytest.raises(SupervisorError, match=r"migrate exited with status 3.*\n.*bad schema"):
            argv = [sys.executable, "-c", "print('bad schema'); raise SystemExit(3)"]
            supervisor.launch(Component("migrate", argv, oneshot=True))
    finally:
        supervisor.stop()
    assert record.read_text().split() == ["svc", "infra"]
    assert (tmp_path / "logs" / "svc.log").read_text().startswith("svc ready.")
    for pid in children:  # a component's own children go with it
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    supervisor.stop()  # a second stop is harmless


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


# A supervisor with one component that ignores SIGTERM (as a Celery worker still starting,
# waiting on a broker that died with the stack, does in effect); it prints the pid.
_STUBBORN_STACK = """
import signal, sys, time
from pathlib import Path
from lorafleet.supervisor import Component, Supervisor
stubborn = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready.', flush=True); time.sleep(600)"
)
supervisor = Supervisor(Path(sys.argv[1]), reap_grace=2.0)
component = supervisor.launch(Component("stubborn", [sys.executable, "-c", stubborn], ready_line=r"ready\\."))
print("pid", component.process.pid, flush=True)
time.sleep(600)
"""


def test_a_component_that_ignores_sigterm_is_killed_after_the_supervisor_dies(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _STUBBORN_STACK, str(tmp_path / "logs")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        pid = next(int(line.split()[1]) for line in proc.stdout if line.startswith("pid "))
        assert Path(f"/proc/{pid}").exists() and not _zombie(pid)
        proc.kill()  # SIGKILL: PR_SET_PDEATHSIG's SIGTERM is ignored; the reaper must act
        proc.wait()
        deadline = time.monotonic() + 20
        while not _zombie(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = not _zombie(pid)
        if alive:
            os.kill(pid, signal.SIGKILL)
        assert not alive, "the component outlived its supervisor by 20 s (reap_grace 2 s)"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
