"""Configure structlog once per process: JSON in production, readable console in a terminal."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

_configured = False


class _StderrLogger:
    """Writes each rendered line to whatever ``sys.stderr`` is at the time of the call.

    structlog's PrintLogger binds the stream when it is created; CliRunner and pytest swap
    (and close) ``sys.stderr``, which would make a later log call fail.
    """

    def msg(self, message: str) -> None:
        stream: TextIO = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _stderr_logger_factory(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


def configure_logging(level: str | None = None, json: bool | None = None) -> None:
    """Set up structlog and the stdlib root logger; safe to call more than once.

    ``json`` defaults to ``LORAFLEET_LOG_FORMAT=json`` or, when unset, to "stderr is not a
    terminal". ``level`` defaults to ``LORAFLEET_LOG_LEVEL`` or INFO.
    """
    global _configured
    level_name = (level or os.environ.get("LORAFLEET_LOG_LEVEL", "INFO")).upper()
    if json is None:
        fmt = os.environ.get("LORAFLEET_LOG_FORMAT", "").lower()
        json = fmt == "json" if fmt else not sys.stderr.isatty()
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level_name)),
        logger_factory=_stderr_logger_factory,
        cache_logger_on_first_use=False,
    )
    if not _configured:
        logging.basicConfig(level=level_name, format="%(levelname)s %(name)s: %(message)s")
        # One line per HTTP request from the client library is noise in CLI output.
        for noisy in ("httpx", "httpcore", "urllib3", "alembic.runtime.plugins"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        _configured = True
