"""A live registry API on a database of its own, for the security and fuzz suites.

Each suite gets a freshly created and migrated database (a SQLite file, or a brand-new
PostgreSQL database dropped afterwards), so module-scoped servers never share rows with
the store tests' per-test cleaned databases. The server itself is the API engineer's
``store.api.server.run_registry_api`` (uvicorn in a thread, real HTTP).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from support.services import fresh_postgres_database

from store.api.server import run_registry_api
from store.blobs import BlobStore, open_blob_store
from store.db import make_engine, upgrade
from store.settings import StoreSettings


@contextmanager
def fresh_database(kind: str, directory: Path) -> Iterator[str]:
    """A migrated, empty database of ``kind`` (``sqlite`` | ``postgresql``); yields its URL."""
    if kind == "sqlite":
        url = f"sqlite:///{directory / 'lorafleet.db'}"
        upgrade(url)
        yield url
        return
    with fresh_postgres_database("lorafleet_sec") as url:
        upgrade(url)
        yield url


@dataclass
class LiveStack:
    """A running API with what it stores into, and HTTP clients per token."""

    base_url: str
    admin_token: str
    engine: Engine
    blobs: BlobStore
    blob_root: Path
    settings: StoreSettings

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
def live_stack(url: str, root: Path, **limits: Any) -> Iterator[LiveStack]:
    """Serve the registry API on database ``url`` with a filesystem blob store under
    ``root``; ``limits`` override ``StoreSettings`` fields (``max_lora_rank``, ...)."""
    blob_root = root / "blobs"
    settings = StoreSettings(
        home=root / "home", database_url=url, blob_url=f"file://{blob_root}", **limits
    )
    engine = make_engine(url)
    blobs = open_blob_store(settings.resolved_blob_url(), settings)
    try:
        with run_registry_api(settings, blobs=blobs, engine=engine) as (base_url, token):
            yield LiveStack(base_url, token, engine, blobs, blob_root, settings)
    finally:
        engine.dispose()


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
