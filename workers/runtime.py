"""The composition root of a worker process: settings, database, blob store, Redis.

Built lazily on first use, so a prefork worker's children each open their own connections
after the fork instead of sharing the parent's sockets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING

import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session

from store.settings import StoreSettings, get_settings
from workers.settings import WorkerSettings, get_worker_settings

if TYPE_CHECKING:
    from store.blobs import BlobStore
    from store.formats.spec import ValidationLimits


class Runtime:
    """What tasks, the bridge and the relay need, wired from one pair of settings."""

    def __init__(self, settings: WorkerSettings, store: StoreSettings) -> None:
        self.settings = settings
        self.store = store

    @cached_property
    def engine(self) -> Engine:
        from store.db import make_engine

        return make_engine(self.store.resolved_database_url())

    @cached_property
    def blobs(self) -> BlobStore:
        from store.blobs import open_blob_store

        return open_blob_store(self.store.resolved_blob_url(), self.store)

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=30, socket_connect_timeout=5)

    @property
    def redis_url(self) -> str:
        return self.store.resolved_redis_url()

    @cached_property
    def limits(self) -> ValidationLimits:
        from store.formats.spec import ValidationLimits

        return ValidationLimits.from_settings(self.store)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work; database faults come out as ``TransientError``."""
        from store.db import session_scope

        with session_scope(self.engine) as session:
            yield session


@lru_cache(maxsize=1)
def get_runtime() -> Runtime:
    """This process's runtime (built on first call)."""
    return Runtime(get_worker_settings(), get_settings())
