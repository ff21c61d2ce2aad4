"""The app factory of ``lorafleet api --workers N`` (``store.cli``): each uvicorn worker
process builds its own registry app (database pool, fleet-view cache) from the environment
its parent prepared. Here, not in ``store``, because it sets up lorafleet's logging, which
``store`` does not import."""

from __future__ import annotations

from fastapi import FastAPI

from lorafleet.logging import configure_logging
from store.api import create_app
from store.heap import freeze_startup_heap
from store.settings import StoreSettings


def app_from_environment() -> FastAPI:
    """The registry app of one worker process, configured as the parent was: the log level
    and the admin token come through ``LORAFLEET_*`` variables it set."""
    configure_logging()
    app = create_app(StoreSettings())
    freeze_startup_heap("api")
    return app
