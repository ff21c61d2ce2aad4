"""Plain helpers shared by test modules (import as ``from netsupport import ...``).

Kept out of ``conftest.py`` because several directories have a conftest of their own and
``from conftest import`` would pick whichever was imported first.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

S3_ACCESS_KEY = "testing"
S3_SECRET_KEY = "testing"

PG_ADMIN_URL = os.environ.get(
    "LORAFLEET_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE_URL = os.environ.get("LORAFLEET_TEST_REDIS", "redis://127.0.0.1:6379")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fresh_postgres_database(
    prefix: str = "lorafleet_test", admin_url: str = PG_ADMIN_URL
) -> Iterator[str]:
    """A brand-new, empty PostgreSQL database ``<prefix>_<10 hex>`` on the server of
    ``admin_url``; yields its URL and drops it (``WITH (FORCE)``) afterwards, even when the
    body raises. Migrating or seeding it is the caller's business."""
    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def flushed_redis_db(url: str) -> Iterator[str]:
    """Yield ``url`` (a Redis DB index of its own), flushing that DB before and after."""
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
