"""The review console at ``/ui``: server-rendered pages (Jinja2 templates and a vendored
stylesheet in this package, no script and no external request) over the same service
functions, roles and tenancy as the REST API.

``routes`` holds the pages and actions, ``session`` the sign-in cookie and the CSRF tokens,
``views`` what a page shows (comparison, chart, validation facts) as plain values.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

__all__ = ["install_console"]


def install_console(app: FastAPI) -> None:
    """Serve the console on ``app`` under ``/ui`` (pages left out of the OpenAPI schema)."""
    from store.ui.routes import router

    app.mount("/ui/static", StaticFiles(directory=str(files("store.ui") / "static")), "ui-static")
    app.include_router(router)
