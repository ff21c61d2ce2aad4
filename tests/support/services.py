"""The services tests run against: the machine's PostgreSQL and Redis, moto's S3 (its
credentials), and free TCP ports. Import as ``from support.services import ...``.

``LORAFLEET_TEST_PG_ADMIN`` and ``LORAFLEET_TEST_REDIS`` point at other servers;
``LORAFLEET_TEST_REDIS_DB`` picks the Redis DB index of a run.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

# moto accepts any credentials; every suite uses these.
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


def redis_db_url(default_index: int) -> str:
    """The URL of this run's Redis DB index: ``LORAFLEET_TEST_REDIS_DB``, else
    ``default_index``."""
    index = int(os.environ.get("LORAFLEET_TEST_REDIS_DB", str(default_index)))
    return f"{REDIS_BASE_URL}/{index}"


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
