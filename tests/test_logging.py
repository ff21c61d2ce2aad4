"""Logging is configured once and survives the stream swaps test runners and CLIs do."""

from __future__ import annotations

import io
import json
import sys

import structlog

from lorafleet.logging import configure_logging


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
