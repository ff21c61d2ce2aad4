"""Run a set of local processes as one unit: launch, pump their output, wait for health,
stop them in order. Knows nothing about lorafleet's components (``lorafleet.stack`` is the
topology built on it); test harnesses use it for worker, bridge and beat processes.

    supervisor = Supervisor(logs_dir)
    supervisor.launch(Component("redis", [...], probe=redis_ok(url), tier=0))
    supervisor.launch(Component("api", [...], env=env, probe=http_ok(f"{url}/health")))
    supervisor.wait_all_healthy()
    ...
    supervisor.stop()  # highest tier first, each tier in parallel: SIGTERM, then SIGKILL

Every component runs in its own process group (its children are stopped with it) with
``PR_SET_PDEATHSIG``, so a supervisor killed with SIGKILL leaves no orphans behind: each
component gets SIGTERM at once, and a reaper process (``_REAPER``, told of every group)
SIGKILLs the groups still alive ``reap_grace`` seconds later (a Celery worker killed while
it starts can wait on its broker far longer than that). Each
line a component prints goes to ``<logs_dir>/<name>.log`` and, when given, to an ``echo``
sink (``prefixed_echo`` prints ``name | line`` as ``docker compose up`` does).
"""

from __future__ import annotations

import ctypes
import os
import re
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

Probe = Callable[[], bool]
"""A health check: True when the component serves."""

_PR_SET_PDEATHSIG = 1

# The reaper: reads "+PGID" / "-PGID" lines from the supervisor; at EOF (the supervisor has
# gone, however it went) it waits up to GRACE seconds for the groups still listed to exit
# on their own (they got SIGTERM from PR_SET_PDEATHSIG), then SIGKILLs what is left.
_REAPER = """
import os, signal, sys, time
grace = float(sys.argv[1])
groups = set()
for line in sys.stdin:
    sign, pgid = line[0], int(line[1:])
    (groups.add if sign == "+" else groups.discard)(pgid)
deadline = time.monotonic() + grace
while groups and time.monotonic() < deadline:
    for pgid in list(groups):
        try:
            os.killpg(pgid, 0)
        except OSError:
            groups.discard(pgid)
    time.sleep(0.2)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class SupervisorError(RuntimeError):
    """A component failed to start, become healthy or stay up; the message names it and
    ends with its last log lines."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str) -> Probe:
    """A probe: GET ``url`` answers 2xx."""

    def probe() -> bool:
        try:
            return httpx.get(url, timeout=2.0).is_success
        except httpx.HTTPError:
            return False

    return probe


def redis_ok(url: str) -> Probe:
    """A probe: the Redis server at ``url`` answers PING."""

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
    """One supervised process.

    Healthy when ``probe`` passes and ``ready_line`` (a regex) was printed, whichever are
    given; with neither, as soon as it runs. A ``oneshot`` is healthy once it exits 0 (a
    migration). ``env`` is added to the supervisor's environment. On ``stop``, higher
    ``tier`` values stop first (services at 1 before the infrastructure they use at 0)."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    probe: Probe | None = None
    ready_line: str | None = None
    oneshot: bool = False
    tier: int = 1
    process: subprocess.Popen[bytes] | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _reader: threading.Thread | None = None
    _tail: list[str] = field(default_factory=list)

    def tail(self, n: int = 20) -> str:
        """The last ``n`` lines the component printed (for error messages)."""
        return "\n".join(self._tail[-n:])


class Supervisor:
    """Launches components and stops them all; safe to ``stop`` twice, and ``stop`` never
    leaves a child running."""

    def __init__(
        self,
        logs_dir: Path,
        *,
        echo: LineSink | None = None,
        health_timeout: float = 120.0,
        stop_timeout: float = 10.0,
        reap_grace: float = 10.0,
        cwd: Path | None = None,
    ) -> None:
        self.logs_dir = logs_dir
        self.echo = echo
        self.health_timeout = health_timeout
        self.stop_timeout = stop_timeout
        self.reap_grace = reap_grace
        self.cwd = cwd
        self.components: list[Component] = []
        self._echo_lock = threading.Lock()
        self._reaper: subprocess.Popen[bytes] | None = None

    def _tell_reaper(self, sign: str, pgid: int) -> None:
        """Tell the reaper (started with the first component) of a group to watch (+) or
        one that is gone (-)."""
        if self._reaper is None:
            self._reaper = subprocess.Popen(
                [sys.executable, "-c", _REAPER, str(self.reap_grace)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "")},  # none of a stack's variables
                start_new_session=True,  # a terminal's Ctrl-C is not for it
            )
        try:
            assert self._reaper.stdin is not None
            self._reaper.stdin.write(f"{sign}{pgid}\n".encode())
            self._reaper.stdin.flush()
        except (BrokenPipeError, ValueError):
            log.warning("reaper_gone", pgid=pgid)

    def launch(self, component: Component, *, wait: bool = True) -> Component:
        """Start ``component`` (output pumped to its log file and the echo sink); with
        ``wait``, return only once it is healthy (``SupervisorError`` otherwise)."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **component.env, "PYTHONUNBUFFERED": "1"}
        log.debug("component_starting", component=component.name, argv=component.argv)
        component.process = subprocess.Popen(
            component.argv,
            env=env,
            cwd=self.cwd or os.getcwd(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: a terminal's Ctrl-C reaches us only
            preexec_fn=_die_with_parent,
        )
        self._tell_reaper("+", component.process.pid)
        self.components.append(component)
        component._reader = threading.Thread(
            target=self._pump, args=(component,), name=f"log-{component.name}", daemon=True
        )
        component._reader.start()
        if wait:
            self.wait_healthy(component)
        return component

    def wait_healthy(self, component: Component) -> None:
        """Block until ``component`` is healthy; ``SupervisorError`` if it exits first (a
        oneshot: exits non-zero) or ``health_timeout`` passes."""
        proc = component.process
        assert proc is not None, f"{component.name} was never launched"
        deadline = time.monotonic() + self.health_timeout
        while time.monotonic() < deadline:
            code = proc.poll()
            if component.oneshot and code == 0:
                self._tell_reaper("-", proc.pid)
                return
            if code is not None:
                raise SupervisorError(self._failure(component, f"exited with status {code}"))
            if not component.oneshot and self._healthy(component):
                return
            time.sleep(0.2)
        raise SupervisorError(
            self._failure(component, f"not healthy after {self.health_timeout:.0f}s")
        )

    def wait_all_healthy(self) -> None:
        """``wait_healthy`` for every component launched so far."""
        for component in self.components:
            self.wait_healthy(component)

    def check_alive(self) -> None:
        """Raise ``SupervisorError`` (with its last log lines) if a long-running component
        has exited; poll this so a crash is reported at once, not as a timeout."""
        for component in self.components:
            if component.oneshot or component.process is None:
                continue
            code = component.process.poll()
            if code is not None:
                raise SupervisorError(self._failure(component, f"exited with status {code}"))

    def stop(self) -> None:
        """Stop every component, highest tier first; within a tier all at once. Each gets
        SIGTERM, its whole process group SIGKILL after ``stop_timeout``."""
        for tier in sorted({c.tier for c in self.components}, reverse=True):
            self._stop_tier([c for c in reversed(self.components) if c.tier == tier])
        self.components.clear()
        if self._reaper is not None:  # nothing left to watch: its EOF ends it at once
            if self._reaper.stdin is not None:
                self._reaper.stdin.close()
            self._reaper.wait(timeout=5)
            self._reaper = None

    def _stop_tier(self, components: list[Component]) -> None:
        for component in components:
            proc = component.process
            if proc is not None and proc.poll() is None:
                # The leader only: Celery's main process then stops its pool children itself
                # (warm shutdown) instead of them dying mid-task.
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
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
            self._tell_reaper("-", proc.pid)
            if component._reader is not None:
                component._reader.join(timeout=2)

    def _pump(self, component: Component) -> None:
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
                if self.echo is not None:
                    with self._echo_lock:
                        self.echo(component.name, line)

    def _healthy(self, component: Component) -> bool:
        if component.ready_line is not None and not component._ready.is_set():
            return False
        return component.probe is None or component.probe()

    def _failure(self, component: Component, what: str) -> str:
        if component._reader is not None:
            component._reader.join(timeout=1)
        logfile = self.logs_dir / f"{component.name}.log"
        return f"{component.name} {what}; last lines ({logfile}):\n{component.tail()}"


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask Linux to SIGTERM it if we die, so a
    # SIGKILLed supervisor cannot leave components running.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


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
