"""The chaos harness: real lorafleet processes we can kill, and the faults we inject.

* ``Proc``: a subprocess in its own process group, so ``kill9()`` takes a Celery worker
  together with its prefork children, exactly like a node dying.
* ``fresh_database`` / ``write_artifacts``: a seeded PostgreSQL database and the shared
  adapter directories every run announces.
* ``Announced``: one announcement and the outcome it must end with.

The faults themselves are in ``faults.py``; the pipeline's processes in ``cluster.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from support.services import fresh_postgres_database

REPO = Path(__file__).resolve().parents[2]
BASE_MODEL = "tiny-llama"
AUTO_NS, MANUAL_NS = "acme", "gated"
# The Celery app the workers run; another module can be named to try a configuration change
# under the same faults (it must import ``workers.tasks``' app and adjust its ``conf``).
CELERY_APP = os.environ.get("LORAFLEET_CHAOS_CELERY_APP", "workers.celery_app:app")


def base_model_config(**overrides: object) -> dict:
    """The tiny Llama every chaos and load run registers (the engine can load it too)."""
    from engine.tiny import tiny_config

    return tiny_config(**overrides)  # type: ignore[arg-type]


@contextmanager
def fresh_database(prefix: str = "lorafleet_chaos") -> Iterator[str]:
    """A brand-new PostgreSQL database, migrated and seeded with namespaces ``acme`` (auto
    approval), ``gated`` (manual) and the base model; dropped afterwards."""
    from sqlmodel import Session

    from store import registry
    from store.db import make_engine, upgrade

    with fresh_postgres_database(prefix) as url:
        upgrade(url)
        engine = make_engine(url)
        try:
            with Session(engine) as s:
                registry.create_namespace(s, AUTO_NS, approval_policy="auto", actor="chaos")
                registry.create_namespace(s, MANUAL_NS, approval_policy="manual", actor="chaos")
                registry.register_base_model(s, BASE_MODEL, base_model_config(), actor="chaos")
        finally:
            engine.dispose()
        yield url


def write_artifacts(root: Path) -> dict[str, Path]:
    """Three valid HF PEFT adapters for the tiny model and one trained for another model
    (refused with ``shape_mismatch``), under the artifact root ``root``."""
    from factories import random_adapter, write_hf_peft

    from store.formats import BaseModelSpec

    spec = BaseModelSpec.from_hf_config(base_model_config())
    other = BaseModelSpec.from_hf_config(base_model_config(hidden_size=32, intermediate_size=64))
    out: dict[str, Path] = {"root": root}
    for seed in range(3):
        out[f"valid-{seed}"] = write_hf_peft(
            random_adapter(spec, rank=4, seed=seed), root / f"valid-{seed}"
        )
    out["invalid"] = write_hf_peft(random_adapter(other, rank=4, seed=9), root / "invalid")
    return out


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


@dataclass
class Announced:
    """One announcement we sent and the outcome the registry must end with."""

    event_id: str
    coordinates: str
    expected: str  # ready | pending | failed
    code: str | None = None  # the failure code when expected == "failed"
    sent_at: float = field(default_factory=time.time)


def worker_argv(name: str, concurrency: int = 2) -> list[str]:
    """A real Celery worker on every lorafleet queue (as ``lorafleet worker`` runs it)."""
    return [
        sys.executable, "-m", "celery", "-A", CELERY_APP, "worker",
        "-Q", "ingest,fleet,maintenance", f"--concurrency={concurrency}", "--pool=prefork",
        "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-l", "INFO",
    ]  # fmt: skip


def lorafleet_argv(*args: str) -> list[str]:
    """The ``lorafleet`` CLI of this checkout."""
    return [str(Path(sys.executable).parent / "lorafleet"), *args]
