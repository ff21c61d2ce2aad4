"""The pipeline's processes as real subprocesses, for the pipeline, chaos and load suites.

* ``worker_argv`` / ``bridge_argv`` / ``beat_argv`` / ``lorafleet_argv``: the command lines
  ``lorafleet worker | bridge | beat`` run, the worker's queues taken from ``events.streams``.
* ``process_env``: this environment plus ``LORAFLEET_*`` variables, with the checkout on
  ``PYTHONPATH``.
* ``Proc``: a subprocess in its own process group, logging to a file, that can wait for a
  ready line, be killed with SIGKILL (children included), restarted and stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from events import streams

REPO = Path(__file__).resolve().parents[2]
CELERY_APP = "workers.celery_app:app"
WORKER_QUEUES = ",".join((streams.INGEST_QUEUE, streams.FLEET_QUEUE, streams.MAINTENANCE_QUEUE))
WORKER_READY = b" ready."  # what a Celery worker logs once it consumes
BRIDGE_READY = b"stream_consumer_connected"  # what the ingest bridge logs once it reads


def worker_argv(name: str, concurrency: int = 2, app: str = CELERY_APP) -> list[str]:
    """A real Celery worker on every lorafleet queue (as ``lorafleet worker`` runs it), node
    name ``<name>@<host>``."""
    return [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "-Q", WORKER_QUEUES, f"--concurrency={concurrency}", "--pool=prefork",
        "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-l", "INFO",
    ]  # fmt: skip


def lorafleet_argv(*args: str) -> list[str]:
    """The ``lorafleet`` CLI of this checkout."""
    return [str(Path(sys.executable).parent / "lorafleet"), *args]


def bridge_argv(consumer: str) -> list[str]:
    """An ingest bridge reading the jobs stream as consumer ``consumer``."""
    return lorafleet_argv("bridge", "--consumer", consumer)


def beat_argv(schedule: Path) -> list[str]:
    """Celery beat keeping its state in ``schedule``."""
    return lorafleet_argv("beat", "--schedule", str(schedule))


def process_env(variables: dict[str, str]) -> dict[str, str]:
    """This process's environment plus ``variables``, with the checkout first on
    ``PYTHONPATH`` (so a child imports this tree's packages)."""
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": pythonpath, **variables}


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``predicate`` until truthy; ``AssertionError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - the thing we wait for may be down meanwhile
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not reached in {timeout:.0f}s")


class Proc:
    """A child process in its own session (process group), logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self.kills = 0
        # Supervision, like compose's ``restart: unless-stopped``: a process that exits
        # while ``wanted`` is a crash, counted and restarted. The lock keeps the supervisor
        # and a test's own kill/restart from racing.
        self._lock = threading.RLock()
        self.wanted = False
        self.crashes: list[str] = []

    def start(self, ready_marker: bytes | None = None, timeout: float = 90.0) -> Proc:
        """Start (or restart) the process; with ``ready_marker`` wait until its log says it."""
        with self._lock:
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            log = self.log_path.open("ab")
            self.popen = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill9 takes the children
            )
            log.close()
            self._offset = offset
            self.wanted = True
        if ready_marker is not None:
            self.wait_ready(ready_marker, timeout)
        return self

    def wait_ready(self, marker: bytes, timeout: float = 90.0) -> None:
        """Wait until the log of the current start says ``marker``; ``RuntimeError`` with
        the log's tail if the process exits first."""
        deadline = time.monotonic() + timeout
        while marker not in self._log_from(self._offset):
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready in {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.2)

    def _log_from(self, offset: int) -> bytes:
        with self.log_path.open("rb") as fh:
            fh.seek(offset)
            return fh.read()

    def _check_alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}")
        return True

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def restart_if_crashed(self) -> bool:
        """If the process exited on its own while wanted, note why and start it again."""
        with self._lock:
            if not self.wanted or self.popen is None or self.popen.poll() is None:
                return False
            last = self.tail(600).strip().splitlines()[-1:] or [""]
            self.crashes.append(f"exit {self.popen.returncode}: {last[0][:300]}")
            self._killpg(signal.SIGKILL)  # orphaned children of a dead parent
            self.start()
            return True

    def _killpg(self, sig: signal.Signals) -> None:
        if self.popen is not None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def kill9(self) -> None:
        """SIGKILL the whole process group: no shutdown handler runs."""
        with self._lock:
            if self.popen is None:
                return
            self.wanted = False
            self._killpg(signal.SIGKILL)
            self.popen.wait(timeout=30)
            self.kills += 1

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group, then SIGKILL what is left after ``timeout``."""
        with self._lock:
            self.wanted = False
            if self.popen is None:
                return
            if self.popen.poll() is None:
                self._killpg(signal.SIGTERM)
                try:
                    self.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
            self._killpg(signal.SIGKILL)  # prefork children may outlive their parent
            if self.popen.poll() is None:
                self.popen.wait(timeout=10)

    def tail(self, n: int = 4000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-n:].decode(errors="replace")
