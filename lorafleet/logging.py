"""Configure logging once per process: JSON in production, readable console in a terminal.

Our structlog events and every stdlib record (uvicorn, alembic, celery, warnings) go through
the same renderer, so with ``LORAFLEET_LOG_FORMAT=json`` each line a process writes to stderr
is one JSON object. Routine traffic (the outbox relay's heartbeat, engines polling the fleet
and health routes, alembic's per-connection lines) is logged at DEBUG, so the console of
``lorafleet up`` shows what happens rather than who asks.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("json", "console")

# Stdlib records at INFO that are routine, by logger: a record matches when its message
# contains one of the strings. "workers.tasks.relay" is the beat-scheduled outbox relay
# (workers.celery_app), sent, received and finished every LORAFLEET_RELAY_INTERVAL_S; the
# relay itself logs at INFO when it moved rows.
_ROUTINE_MESSAGES: dict[str, tuple[str, ...]] = {
    "celery.beat": ("workers.tasks.relay",),
    "celery.worker.strategy": ("workers.tasks.relay[",),
    "celery.app.trace": ("workers.tasks.relay[",),
    "celery.worker.request": ("workers.tasks.relay[",),  # an expired tick, discarded
    "alembic.runtime.migration": ("Context impl", "Will assume"),
}
# Routes engines, `lorafleet pull` and probes poll; a failed poll (4xx/5xx) stays at INFO.
_ROUTINE_PATHS = ("/v1/fleet", "/v1/health/live", "/v1/health/ready", "/metrics")


class LoggingConfigError(ValueError):
    """LORAFLEET_LOG_LEVEL or LORAFLEET_LOG_FORMAT (or the argument) is not one we know."""


def _stderr() -> TextIO:
    """Whatever ``sys.stderr`` is now, unless it is the proxy a Celery worker puts there
    (it logs what it is given: our lines would be logged again, wrapped): then the real one.

    structlog's PrintLogger binds the stream when it is created; CliRunner and pytest swap
    (and close) ``sys.stderr``, which would make a later log call fail.
    """
    current = sys.stderr
    if type(current).__name__ == "LoggingProxy" and sys.__stderr__ is not None:
        return sys.__stderr__
    return current


class _StderrLogger:
    """Writes each rendered line to ``_stderr()`` at the time of the call."""

    def msg(self, message: str) -> None:
        stream = _stderr()
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _stderr_logger_factory(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler: stdlib records rendered like our own events, to ``_stderr()``;
    routine INFO records are demoted to DEBUG first."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.threshold = level

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return _stderr()

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass  # always the current stderr

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and _is_routine(record):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return record.levelno >= self.threshold and bool(super().filter(record))


def _is_routine(record: logging.LogRecord) -> bool:
    if record.name == "uvicorn.access" and isinstance(record.args, tuple):
        # uvicorn's access record: (client, method, path with query, http version, status)
        if len(record.args) == 5:
            _client, method, path, _version, status = record.args
            return (
                method in ("GET", "HEAD")
                and str(path).split("?", 1)[0] in _ROUTINE_PATHS
                and int(status) < 400  # type: ignore[call-overload]
            )
        return False
    needles = _ROUTINE_MESSAGES.get(record.name)
    if not needles:
        return False
    message = record.getMessage()
    return any(needle in message for needle in needles)


def resolve_level(level: str | None = None) -> str:
    """The level name (``level``, else ``LORAFLEET_LOG_LEVEL``, else INFO), upper case;
    raises ``LoggingConfigError`` naming the choices for anything else."""
    source = "--log-level" if level else "LORAFLEET_LOG_LEVEL"
    raw = level or os.environ.get("LORAFLEET_LOG_LEVEL") or "INFO"
    name = raw.strip().upper()
    if name == "WARN":
        name = "WARNING"
    if name not in LEVELS:
        choices = ", ".join(lvl.lower() for lvl in LEVELS)
        raise LoggingConfigError(f"{source}={raw!r} is not a log level (one of {choices})")
    return name


def resolve_json(json: bool | None = None) -> bool:
    """Whether to log JSON: ``json``, else ``LORAFLEET_LOG_FORMAT`` (json or console), else
    "stderr is not a terminal"; raises ``LoggingConfigError`` for another format."""
    if json is not None:
        return json
    raw = os.environ.get("LORAFLEET_LOG_FORMAT", "")
    fmt = raw.strip().lower()
    if not fmt:
        return not sys.stderr.isatty()
    if fmt not in FORMATS:
        raise LoggingConfigError(
            f"LORAFLEET_LOG_FORMAT={raw!r} is not a log format (one of {', '.join(FORMATS)})"
        )
    return fmt == "json"


def configure_logging(level: str | None = None, json: bool | None = None) -> None:
    """Set up structlog and the stdlib root logger; safe to call more than once (the last
    call wins).

    ``level`` defaults to ``LORAFLEET_LOG_LEVEL`` or INFO; ``json`` to
    ``LORAFLEET_LOG_FORMAT`` or, when unset, to "stderr is not a terminal". Raises
    ``LoggingConfigError`` (before changing anything) for an unknown level or format.
    """
    level_name = resolve_level(level)
    as_json = resolve_json(json)
    level_no = logging.getLevelName(level_name)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=_stderr_logger_factory,
        cache_logger_on_first_use=False,
    )
    handler = _StderrHandler(level_no)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    # billiard's "multiprocessing" logger (a Celery worker's pool supervisor: "Process
    # 'ForkPoolWorker-1' ... exited with ...") does not propagate, and Celery gives it a
    # plain-text handler unless it has one: it gets ours too.
    pool = logging.getLogger("multiprocessing")
    for logger in (root, pool):
        for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
    root.setLevel(level_no)
    pool.propagate = False
    # uvicorn's own logging set-up (run by any server started with its default log_config or
    # a log_level) gives its loggers plain-text handlers, levels of their own and no
    # propagation: take them back to ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.setLevel(logging.NOTSET)
        server_logger.propagate = True
    logging.captureWarnings(True)  # a Python warning is a log line too
    # One line per HTTP request from the client library is noise in CLI output.
    for noisy in ("httpx", "httpcore", "urllib3", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
