"""The registry API and the engine served over real HTTP (uvicorn in a thread, real database).

* ``serve_registry(database_url, root, **settings)``: the registry API with a filesystem
  blob store under ``root``; yields a ``LiveRegistry`` (URL, admin token, admin client, the
  engine and blob store it writes to).
* ``fresh_database(kind, directory)``: a migrated, empty SQLite or PostgreSQL database.
* ``upload`` / ``directory_files``: ``POST /v1/adapters`` with raw multipart parts.
* ``live_engine(runtime)``: an engine runtime served on a free port.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import Engine

from store.api.server import run_registry_api
from store.blobs import BlobStore, open_blob_store
from store.client import RegistryClient
from store.db import make_engine, upgrade
from store.settings import StoreSettings
from support.services import free_port, fresh_postgres_database


@dataclass
class LiveRegistry:
    """A running registry API: its URL, admin token, an admin client, and what it stores
    into."""

    base_url: str
    admin_token: str
    admin: RegistryClient
    engine: Engine
    blobs: BlobStore
    blob_root: Path
    settings: StoreSettings

    @property
    def home(self) -> Path:
        """The API's ``LORAFLEET_HOME`` (its upload staging lives under ``tmp/``)."""
        return self.settings.home

    def client(self, token: str | None) -> RegistryClient:
        """Another client on the same server (close it, or let the test end)."""
        return RegistryClient(self.base_url, token)

    def http(self, token: str | None) -> httpx.Client:
        """A plain HTTP client on the server (``token`` None: anonymous). Close it."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30.0)

    def mint(self, role: str, namespace: str | None, name: str) -> str:
        """A new token of ``role`` on ``namespace`` (None: global), minted by the admin."""
        with self.http(self.admin_token) as client:
            response = client.post(
                "/v1/tokens", json={"role": role, "namespace": namespace, "name": name}
            )
        assert response.status_code == 201, response.text
        return response.json()["token"]


@contextmanager
def serve_registry(
    database_url: str, root: Path, *, engine: Engine | None = None, **settings: Any
) -> Iterator[LiveRegistry]:
    """Serve the registry API on ``database_url`` (migrated already), home ``root/home``,
    blobs under ``root/blobs``; ``settings`` override ``StoreSettings`` fields
    (``max_lora_rank``, ``admin_token``, ...). ``engine`` is used as is; without it one is
    made and disposed of afterwards."""
    blob_root = root / "blobs"
    values = {
        "home": root / "home",
        "database_url": database_url,
        "blob_url": f"file://{blob_root}",
    }
    store_settings = StoreSettings(**{**values, **settings})
    db = engine or make_engine(database_url)
    blobs = open_blob_store(store_settings.resolved_blob_url(), store_settings)
    try:
        with (
            run_registry_api(store_settings, blobs=blobs, engine=db) as (url, token),
            RegistryClient(url, token) as admin,
        ):
            yield LiveRegistry(url, token, admin, db, blobs, blob_root, store_settings)
    finally:
        if engine is None:
            db.dispose()


@contextmanager
def fresh_database(kind: str, directory: Path) -> Iterator[str]:
    """A migrated, empty database of ``kind`` (``sqlite``: a file in ``directory``;
    ``postgresql``: a brand-new database, dropped afterwards); yields its URL."""
    if kind == "sqlite":
        url = f"sqlite:///{directory / 'lorafleet.db'}"
        upgrade(url)
        yield url
        return
    with fresh_postgres_database("lorafleet_sec") as url:
        upgrade(url)
        yield url


def upload(
    client: httpx.Client,
    files: list[tuple[str, bytes]],
    *,
    namespace: str,
    name: str,
    version: str,
    base_model: str,
    **fields: str,
) -> httpx.Response:
    """``POST /v1/adapters`` with ``files`` as (relative path, bytes) multipart parts."""
    data = {"namespace": namespace, "name": name, "version": version, "base_model": base_model}
    data.update(fields)
    parts = [("files", (path, content, "application/octet-stream")) for path, content in files]
    return client.post("/v1/adapters", data=data, files=parts)


def directory_files(directory: Path) -> list[tuple[str, bytes]]:
    """Every regular file under ``directory`` as (relative POSIX path, bytes), sorted."""
    return [
        (p.relative_to(directory).as_posix(), p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    ]


@contextmanager
def live_engine(runtime: Any) -> Iterator[str]:
    """Serve the engine ``runtime`` (an ``EngineRuntime``) with uvicorn on a free port;
    yields the base URL (``.../v1``-less)."""
    import uvicorn

    from engine.server import create_app

    port = free_port()
    config = uvicorn.Config(create_app(runtime), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("engine did not start")
        time.sleep(0.02)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)
