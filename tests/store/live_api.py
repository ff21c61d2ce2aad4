"""Fixtures for a live registry API over real HTTP (uvicorn in a thread, real database).

Use it with ``from live_api import live_registry_fixture  # noqa: F401`` (the fixture is
named ``live_registry``). ``run_registry_api`` lives in ``store.api.server`` so tests outside ``tests/store`` can
import it as ``from store.api.server import run_registry_api``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from store.api.server import run_registry_api
from store.blobs import BlobStore, open_blob_store
from store.client import RegistryClient
from store.settings import StoreSettings

__all__ = ["LiveRegistry", "live_registry_fixture", "run_registry_api"]


@dataclass
class LiveRegistry:
    """A running API: its URL, admin token, an admin client, and what it stores into."""

    base_url: str
    admin_token: str
    admin: RegistryClient
    engine: Engine
    blobs: BlobStore
    blob_root: Path
    home: Path

    def client(self, token: str | None) -> RegistryClient:
        """Another client on the same server (close it, or let the test end)."""
        return RegistryClient(self.base_url, token)


@pytest.fixture(name="live_registry")
def live_registry_fixture(db_url: str, engine: Engine, tmp_path: Path) -> Iterator[LiveRegistry]:
    """The registry API on ``db_url`` (SQLite and PostgreSQL) with a filesystem blob store."""
    home = tmp_path / "home"
    blob_root = tmp_path / "blobs"
    settings = StoreSettings(home=home, database_url=db_url, blob_url=f"file://{blob_root}")
    blobs = open_blob_store(settings.resolved_blob_url(), settings)
    with run_registry_api(settings, blobs=blobs, engine=engine) as (url, token):
        with RegistryClient(url, token) as admin:
            yield LiveRegistry(url, token, admin, engine, blobs, blob_root, home)
