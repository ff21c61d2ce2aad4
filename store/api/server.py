"""The registry API served from a background thread: uvicorn running ``create_app`` on a
free port. Embedded deployments (``lorafleet demo``) and tests that need the registry over
real HTTP (pipeline, engine, end-to-end) use it::

    from store.api.server import run_registry_api

    with run_registry_api(StoreSettings(home=tmp, database_url=url)) as (base_url, admin_token):
        RegistryClient(base_url, admin_token).create_namespace("acme")

The database must already be migrated (``store.db.upgrade``). Without ``admin_token`` in the
settings a random one is used and returned.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from sqlalchemy.engine import Engine

from store.api import create_app
from store.blobs import BlobStore
from store.settings import StoreSettings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def run_registry_api(
    settings: StoreSettings,
    *,
    blobs: BlobStore | None = None,
    engine: Engine | None = None,
    startup_timeout: float = 15.0,
) -> Iterator[tuple[str, str]]:
    """Serve the API until the block exits; yields ``(base_url, admin_token)``.

    The server is up and answering ``/v1/health/live`` before the block starts, and fully
    stopped (port released) after it ends.
    """
    token = settings.admin_token or "lft_test_" + secrets.token_urlsafe(16)
    settings = settings.model_copy(update={"admin_token": token})
    app = create_app(settings, blobs=blobs, engine=engine)
    port = _free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"registry-api-{port}", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_timeout
    while True:
        try:
            if httpx.get(f"{base_url}/v1/health/live", timeout=1.0).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"registry API did not start on {base_url}")
        time.sleep(0.05)
    try:
        yield base_url, token
    finally:
        server.should_exit = True
        thread.join(timeout=10)
