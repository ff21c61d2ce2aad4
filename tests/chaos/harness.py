"""The chaos harness: real lorafleet processes we can kill, and the faults we inject.

* ``Proc``: a subprocess in its own process group, so ``kill9()`` takes a Celery worker
  together with its prefork children, exactly like a node dying.
* ``TcpProxy``: a TCP relay in front of PostgreSQL; ``cut()`` resets every open connection
  and refuses new ones until ``restore()``.
* ``RedisServer``: our own ``redis-server`` (append-only, fsync always) that can be killed
  with SIGKILL and restarted on the same port and directory.
* ``S3Server``: moto's S3 server on a fixed port, stopped and started again (moto keeps its
  buckets in this process, so a restart is an outage, not a data loss).
* ``Cluster``: the pipeline as deployed (Celery workers, ingest bridge, beat) wired by
  ``LORAFLEET_*`` variables, plus helpers to announce events and wait for quiescence.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[2]
BASE_MODEL = "tiny-llama"
AUTO_NS, MANUAL_NS = "acme", "gated"


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def start(self, ready_marker: bytes | None = None, timeout: float = 90.0) -> Proc:
        """Start (or restart) the process; with ``ready_marker`` wait until its log says it."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill9 takes the children too
        )
        log.close()
        self._offset = offset
        if ready_marker is not None:
            self.wait_ready(ready_marker, timeout)
        return self

    def wait_ready(self, marker: bytes, timeout: float = 90.0) -> None:
        """Wait until the log of the current start says ``marker``."""
        wait_for(
            lambda: self._check_alive() and marker in self._log_from(self._offset),
            timeout,
            f"{self.name} ready",
        )

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

    def kill9(self) -> None:
        """SIGKILL the whole process group: no shutdown handler runs."""
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=30)
        self.kills += 1

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group, then SIGKILL what is left after ``timeout``."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:  # children of a prefork worker may outlive a parent that exited
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.popen.poll() is None:
            self.popen.wait(timeout=10)

    def tail(self, n: int = 4000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-n:].decode(errors="replace")


class TcpProxy:
    """A threaded TCP relay ``127.0.0.1:port -> upstream`` that tests can cut and restore."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.cuts = 0
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed: cut or shut down
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self) -> None:
        """Refuse new connections and reset every open one (the database is unreachable)."""
        if self._listener is not None:
            # close() alone would not wake the thread blocked in accept(), which would go
            # on accepting on the still-referenced socket; shutdown() does.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            self._close(s)
        self.cuts += 1

    def restore(self) -> None:
        """Accept connections again."""
        if self._listener is None:
            self.start()

    def close(self) -> None:
        self.cut()


class RedisServer:
    """A ``redis-server`` of our own with an fsync-always append-only file."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
            ],  # fmt: skip
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            wait_for(client.ping, 30, f"redis-server on {self.port}")
        finally:
            client.close()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        """SIGKILL and start again on the same port and directory (the AOF is replayed)."""
        self.kill9()
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class S3Server:
    """moto's S3 server on a fixed port that can go down and come back."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server = None
        self.outages = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def outage(self) -> None:
        self.stop()
        self.outages += 1


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
        sys.executable, "-m", "celery", "-A", "workers.celery_app:app", "worker",
        "-Q", "ingest,fleet,maintenance", f"--concurrency={concurrency}", "--pool=prefork",
        "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-l", "INFO",
    ]  # fmt: skip


def lorafleet_argv(*args: str) -> list[str]:
    """The ``lorafleet`` CLI of this checkout."""
    return [str(Path(sys.executable).parent / "lorafleet"), *args]


def jittered(low: float, high: float) -> float:
    return random.uniform(low, high)
