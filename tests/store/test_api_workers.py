"""``lorafleet api --workers N``: N uvicorn worker processes on one port (one process uses one
core), each building its app from the environment the parent resolved; real processes on
PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
from support.metrics_reference import requests_counted
from support.processes import Proc, lorafleet_argv, wait_for
from support.services import free_port, fresh_postgres_database

from store.auth import ADMIN_TOKEN_FILE
from store.client import RegistryClient
from store.db import upgrade


def _env(tmp_path: Path, database_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LORAFLEET_ADMIN_TOKEN", "LORAFLEET_API_URL")
    }
    env.update(
        LORAFLEET_DATABASE_URL=database_url,
        LORAFLEET_HOME=str(tmp_path / "home"),
        LORAFLEET_BLOB_URL=f"file://{tmp_path / 'blobs'}",
        LORAFLEET_LOG_LEVEL="warning",
    )
    return env


def _workers(pid: int) -> list[psutil.Process]:
    """The uvicorn worker processes under ``pid`` (multiprocessing's spawned children, not
    its resource tracker)."""
    return [
        child
        for child in psutil.Process(pid).children()
        if "spawn_main" in " ".join(child.cmdline()) and "resource_tracker" not in child.cmdline()
    ]


def test_workers_share_one_port_and_one_generated_admin_token(tmp_path: Path) -> None:
    with fresh_postgres_database("lorafleet_workers") as database_url:
        upgrade(database_url)
        _serve_with_two_workers(database_url, tmp_path)


def _serve_with_two_workers(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = lorafleet_argv("api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2")
    proc = Proc("api", argv, _env(tmp_path, database_url), tmp_path)
    proc.start()
    try:
        wait_for(lambda: httpx.get(f"{url}/v1/health/ready").status_code == 200, 60, "API ready")
        pid = proc.popen.pid
        wait_for(lambda: len(_workers(pid)) == 2, 30, "two worker processes")
        # The token the parent generated and saved is the one every worker accepts.
        token = (tmp_path / "home" / ADMIN_TOKEN_FILE).read_text().strip()
        client = RegistryClient(url, token)
        client.create_namespace("acme")
        for _ in range(20):  # keep-alive off: spread over both workers' accept queues
            page = httpx.get(
                f"{url}/v1/namespaces",
                headers={"Authorization": f"Bearer {token}", "Connection": "close"},
            )
            assert page.status_code == 200
            assert [ns["name"] for ns in page.json()["data"]] == ["acme"]
        assert (
            httpx.get(f"{url}/v1/namespaces", headers={"Authorization": "Bearer x"}).status_code
            == 401
        )

        # A worker that dies is replaced, and what it counted stays in /metrics (summed
        # over every worker's multiprocess files): kill both that answered the requests.
        metrics_dir = Path(_workers(pid)[0].environ()["PROMETHEUS_MULTIPROC_DIR"])
        assert metrics_dir.is_dir()
        for victim in _workers(pid):
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            wait_for(
                lambda v=victim: (
                    len(_workers(pid)) == 2 and v.pid not in {w.pid for w in _workers(pid)}
                ),
                60,
                "the killed worker replaced",
            )
        assert client.list_adapters()["pagination"]["total"] == 0
        text = httpx.get(f"{url}/metrics").text
        assert requests_counted(text, "GET", "/v1/namespaces", "200") >= 20
        assert requests_counted(text, "GET", "/v1/namespaces", "401") >= 1
        assert "lorafleet_adapters" in text  # the catalog gauges, read from the database

        # SIGTERM to the parent stops every worker.
        workers = _workers(pid)
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(30) == 0
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, f"workers outlived the API: {alive}"
        assert not metrics_dir.exists()  # the parent's own directory, removed on exit
    finally:
        proc.stop()


def test_an_unmigrated_database_exits_2_before_starting_workers(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'empty.db'}"
    started = time.monotonic()
    result = subprocess.run(
        lorafleet_argv("api", "--port", str(free_port()), "--workers", "3"),
        env=_env(tmp_path, database),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "database_not_migrated" in result.stderr
    assert "lorafleet db upgrade" in result.stderr
    assert time.monotonic() - started < 60


def test_a_bad_worker_count_or_setting_is_a_usage_error(tmp_path: Path) -> None:
    env = _env(tmp_path, f"sqlite:///{tmp_path / 'x.db'}")
    flag = subprocess.run(
        lorafleet_argv("api", "--workers", "0"), env=env, capture_output=True, text=True
    )
    assert flag.returncode == 2 and "--workers" in flag.stderr
    # A bad LORAFLEET_* value is one line naming it, exit 2, for every command (it was a
    # pydantic traceback with exit 1, from the root command's settings read).
    for argv, variable, value in [
        (("api",), "LORAFLEET_API_WORKERS", "0"),
        (("namespaces", "list"), "LORAFLEET_API_PORT", "eighty"),
    ]:
        result = subprocess.run(
            lorafleet_argv(*argv),
            env={**env, variable: value},
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"error: invalid setting: {variable}={value!r}: ")
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "home").exists()  # nothing was created on the way out
