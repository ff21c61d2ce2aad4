"""Logging is configured once and survives the stream swaps test runners and CLIs do; every
stderr line is JSON under LORAFLEET_LOG_FORMAT=json; routine traffic logs at debug; an
unknown level or format is an error."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from support.factories import random_adapter, write_hf_peft
from support.processes import lorafleet_argv, process_env, wait_for
from support.services import free_port
from support.tiny import tiny_hf_config

from lorafleet.logging import configure_logging
from store.client import RegistryClient


def test_json_logs_go_to_the_current_stderr_even_after_it_was_replaced() -> None:
    configure_logging("INFO", json=True)
    log = structlog.get_logger("t")
    original = sys.stderr
    first, second = io.StringIO(), io.StringIO()
    try:
        sys.stderr = first
        log.info("first_event", adapter="acme/bot@1.0.0")
        first.close()  # what CliRunner does to its captured stream
        sys.stderr = second
        log.info("second_event", job_id="j1")
    finally:
        sys.stderr = original
    line = json.loads(second.getvalue())
    assert line["event"] == "second_event" and line["job_id"] == "j1" and line["level"] == "info"


def test_level_filters_debug_lines() -> None:
    configure_logging("WARNING", json=True)
    original, buf = sys.stderr, io.StringIO()
    try:
        sys.stderr = buf
        structlog.get_logger("t").info("hidden")
        structlog.get_logger("t").warning("shown")
    finally:
        sys.stderr = original
        configure_logging("INFO", json=True)
    assert "hidden" not in buf.getvalue() and "shown" in buf.getvalue()


def _capture(emit: Callable[[], None]) -> list[dict[str, Any]]:
    """The JSON lines ``emit`` writes to stderr."""
    original, buf = sys.stderr, io.StringIO()
    try:
        sys.stderr = buf
        emit()
    finally:
        sys.stderr = original
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_stdlib_records_render_as_json_like_our_events() -> None:
    configure_logging("INFO", json=True)

    def emit() -> None:
        logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
        logging.getLogger("alembic.runtime.migration").info("Running upgrade -> 0001")

    lines = _capture(emit)
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("uvicorn.error", "info"),
        ("alembic.runtime.migration", "info"),
    ]
    assert lines[0]["event"] == "Started server process [42]" and "timestamp" in lines[0]


def _access(path: str, status: int) -> None:
    # What uvicorn's access logger passes: client, method, path with query, version, status.
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", path, "1.1", status
    )


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_routine_polls_and_the_relay_heartbeat_log_at_debug(level: str) -> None:
    configure_logging(level, json=True)

    def emit() -> None:
        _access("/v1/fleet?base_model=tiny-llama", 200)
        _access("/v1/fleet?base_model=tiny-llama", 503)  # a failing poll is news
        _access("/v1/adapters", 200)
        logging.getLogger("celery.beat").info(
            "Scheduler: Sending due task %s (%s)", "relay-outbox", "workers.tasks.relay"
        )
        logging.getLogger("celery.beat").info(
            "Scheduler: Sending due task %s (%s)", "blob-gc", "workers.tasks.blob_gc"
        )
        logging.getLogger("celery.app.trace").info(
            "Task %s[%s] succeeded in %ss: %r", "workers.tasks.relay", "abc", 0.01, 0
        )

    try:
        lines = _capture(emit)
    finally:
        configure_logging("INFO", json=True)
    shown = [(line["level"], line["event"]) for line in lines]
    routine = [
        ("debug", '127.0.0.1:5000 - "GET /v1/fleet?base_model=tiny-llama HTTP/1.1" 200'),
        ("debug", "Scheduler: Sending due task relay-outbox (workers.tasks.relay)"),
        ("debug", "Task workers.tasks.relay[abc] succeeded in 0.01s: 0"),
    ]
    news = [
        ("info", '127.0.0.1:5000 - "GET /v1/fleet?base_model=tiny-llama HTTP/1.1" 503'),
        ("info", '127.0.0.1:5000 - "GET /v1/adapters HTTP/1.1" 200'),
        ("info", "Scheduler: Sending due task blob-gc (workers.tasks.blob_gc)"),
    ]
    assert all(line in shown for line in news), shown
    if level == "DEBUG":
        assert all(line in shown for line in routine), shown
    else:
        assert not any(line[1] == r[1] for line in shown for r in routine), shown


@pytest.mark.parametrize(
    ("variables", "args", "named"),
    [
        ({"LORAFLEET_LOG_LEVEL": "verbose"}, [], "LORAFLEET_LOG_LEVEL='verbose'"),
        ({}, ["--log-level", "verbose"], "--log-level='verbose'"),
        ({"LORAFLEET_LOG_FORMAT": "yaml"}, [], "LORAFLEET_LOG_FORMAT='yaml'"),
    ],
    ids=["env-level", "option-level", "env-format"],
)
def test_an_unknown_log_level_or_format_is_a_one_line_error(
    variables: dict[str, str], args: list[str], named: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from lorafleet.cli import app; app()", *args, "db", "upgrade"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=process_env({"LORAFLEET_HOME": str(tmp_path / "home"), **variables}),
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: {named} is not a log")
    assert not (tmp_path / "home").exists()  # it stopped before doing anything


def test_every_stderr_line_of_the_api_worker_and_beat_is_json(
    tmp_path: Path, redis_url: str
) -> None:
    """The real processes with LORAFLEET_LOG_FORMAT=json at DEBUG, a registration through
    the API: uvicorn, alembic, celery, warnings and our events are each one JSON object per
    line; the relay heartbeat and fleet polls are there, at debug."""
    port = free_port()
    env = process_env(
        {
            "LORAFLEET_HOME": str(tmp_path / "home"),
            "LORAFLEET_REDIS_URL": redis_url,
            "LORAFLEET_LOG_FORMAT": "json",
            "LORAFLEET_LOG_LEVEL": "DEBUG",
            "LORAFLEET_RELAY_INTERVAL_S": "0.5",
            "LORAFLEET_API_PORT": str(port),
            "LORAFLEET_ADMIN_TOKEN": "lft_json_logs_admin",
        }
    )
    commands = {
        "api": ["api", "--upgrade-db"],
        "worker": ["worker", "--concurrency", "1"],
        "beat": ["beat", "--schedule", str(tmp_path / "beat-schedule")],
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, args in commands.items():
            with (tmp_path / f"{name}.err").open("wb") as err:
                procs[name] = subprocess.Popen(
                    lorafleet_argv(*args),
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                )
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/v1/health/ready").status_code == 200, 60, "api")
        with RegistryClient(url, "lft_json_logs_admin") as admin:
            admin.register_base_model("tiny", tiny_hf_config())
            admin.create_namespace("acme", approval_policy="auto")
            src = write_hf_peft(random_adapter(seed=7), tmp_path / "adapter")
            admin.upload_adapter(
                src, namespace="acme", name="bot", version="1.0.0", base_model="tiny"
            )
            admin.fleet("tiny")
        wait_for(lambda: b"outbox_relayed" in (tmp_path / "worker.err").read_bytes(), 60, "relay")
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    logs: dict[str, list[dict[str, Any]]] = {}
    for name in commands:
        text = (tmp_path / f"{name}.err").read_text()
        lines = text.splitlines()
        assert lines, f"{name} wrote nothing to stderr"
        for line in lines:
            try:
                assert isinstance(json.loads(line), dict)
            except (json.JSONDecodeError, AssertionError):
                pytest.fail(f"{name} wrote a line that is not a JSON object: {line!r}")
        logs[name] = [json.loads(line) for line in lines]

    def events(name: str, logger: str | None = None) -> list[dict[str, Any]]:
        return [e for e in logs[name] if logger is None or e.get("logger") == logger]

    assert any(e.get("logger") == "alembic.runtime.migration" for e in logs["api"])
    fleet_polls = [e for e in events("api", "uvicorn.access") if "GET /v1/fleet" in e["event"]]
    assert fleet_polls and {e["level"] for e in fleet_polls} == {"debug"}
    uploads = [e for e in events("api", "uvicorn.access") if "POST /v1/adapters" in e["event"]]
    assert uploads and uploads[0]["level"] == "info"
    heartbeat = [e for e in events("beat", "celery.beat") if "workers.tasks.relay" in e["event"]]
    assert len(heartbeat) >= 2 and {e["level"] for e in heartbeat} == {"debug"}
    relay_runs = [e for e in logs["worker"] if "workers.tasks.relay[" in str(e.get("event"))]
    assert relay_runs and {e["level"] for e in relay_runs} == {"debug"}
    # The worker's own events (here: in a prefork child) are JSON themselves, not wrapped
    # in a line of Celery's stdout redirection.
    relayed = [e for e in logs["worker"] if e.get("event") == "outbox_relayed"]
    assert relayed and relayed[0]["level"] == "info"
    # Each pool process runs torch on one thread (workers.tasks._connect).
    ready = [e for e in logs["worker"] if e.get("event") == "worker_process_ready"]
    assert ready and {e["torch_threads"] for e in ready} == {1}
    assert not events("worker", "celery.redirected")


def test_a_server_started_with_uvicorns_own_log_config_still_logs_json() -> None:
    """uvicorn's default dictConfig gives its loggers text handlers that do not propagate;
    configuring our logging afterwards takes them back (every line JSON, none lost)."""
    import logging.config

    from uvicorn.config import LOGGING_CONFIG

    logging.config.dictConfig(LOGGING_CONFIG)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # Config(log_level=...)
    configure_logging("INFO", json=True)
    lines = _capture(lambda: _access("/v1/adapters", 200))
    assert [(line["logger"], line["level"]) for line in lines] == [("uvicorn.access", "info")]


def test_the_worker_pool_supervisors_lines_are_json_too(tmp_path: Path) -> None:
    """billiard's "multiprocessing" logger (a prefork child killed: "Process
    'ForkPoolWorker-1' pid:... exited with 'signal 15 (SIGTERM)'") does not propagate, and
    Celery's logging set-up gives it a text handler of its own unless it has one."""
    script = (
        "from lorafleet.logging import configure_logging\n"
        "configure_logging('INFO', json=True)\n"
        "from billiard import util\n"
        "from workers.celery_app import app\n"
        "app.log.setup_logging_subsystem(loglevel='INFO')\n"
        "util.error('Process %r pid:%r exited with %r', 'ForkPoolWorker-1', 1, 'SIGTERM')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=process_env({"LORAFLEET_HOME": str(tmp_path / "home")}),
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # each one JSON
    pool = [line for line in lines if line.get("logger") == "multiprocessing"]
    assert [(line["level"], line["event"]) for line in pool] == [
        ("error", "Process 'ForkPoolWorker-1' pid:1 exited with 'SIGTERM'")
    ], result.stderr
