"""prometheus_client's multiprocess mode, for a process whose children count the samples:
the Celery worker's pool (``workers.metrics``) and ``lorafleet api --workers N``'s uvicorn
workers (``store.metrics``). Light: it must run before prometheus_client is first imported."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable_multiprocess() -> str:
    """Point prometheus_client at a fresh, empty samples directory (returns it), removed when
    this process exits. Must run before prometheus_client is first imported in this process;
    raises ``RuntimeError`` when it was imported already (its values would stay per-process,
    silently)."""
    if "prometheus_client" in sys.modules and not os.environ.get(MULTIPROC_ENV):
        raise RuntimeError("prometheus_client was imported before multiprocess mode was set")
    path = tempfile.mkdtemp(prefix="lorafleet-metrics-")
    os.environ[MULTIPROC_ENV] = path
    owner = os.getpid()  # forked children must not remove it when they exit
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(path, ignore_errors=True))
    return path
