"""Shared fixtures: the real PostgreSQL and Redis on this machine, moto's S3 server, temp dirs.

* ``postgres_url``: a fresh database created for this test session and dropped after it.
* ``redis_url``: a Redis DB index reserved for this run (flushed before and after).
* ``s3_endpoint``: moto's standalone S3 server (``ThreadedMotoServer``), spoken to by the
  real ``minio`` SDK; ``s3_bucket`` is a fresh bucket per test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from netsupport import S3_ACCESS_KEY, S3_SECRET_KEY, free_port  # noqa: F401 (re-exported)

PG_ADMIN_URL = os.environ.get(
    "LORAFLEET_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE_URL = os.environ.get("LORAFLEET_TEST_REDIS", "redis://127.0.0.1:6379")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A brand-new PostgreSQL database for this test session (dropped afterwards)."""
    import sqlalchemy as sa

    name = f"lorafleet_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis DB index of its own for this run, flushed before and after.

    The index comes from ``LORAFLEET_TEST_REDIS_DB`` (default 7) so parallel runs can be kept
    apart.
    """
    import redis

    index = int(os.environ.get("LORAFLEET_TEST_REDIS_DB", "7"))
    url = f"{REDIS_BASE_URL}/{index}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``host:port`` of a moto S3 server running in this process (real HTTP, real S3 protocol)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket name on the moto server (created by the blob store on first use)."""
    return f"lorafleet-{uuid.uuid4().hex[:12]}"
