"""Shared fixtures: the real PostgreSQL and Redis on this machine, moto's S3 server, temp dirs.

* ``postgres_url``: a fresh database created for this test session and dropped after it.
* ``redis_url``: a Redis DB index reserved for this run (flushed before and after).
* ``s3_endpoint``: moto's standalone S3 server (``ThreadedMotoServer``), spoken to by the
  real ``minio`` SDK; ``s3_bucket`` is a fresh bucket per test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from support.services import flushed_redis_db, free_port, fresh_postgres_database, redis_db_url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A brand-new PostgreSQL database for this test session (dropped afterwards)."""
    with fresh_postgres_database("lorafleet_test") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis DB index of its own for this run, flushed before and after.

    The index comes from ``LORAFLEET_TEST_REDIS_DB`` (default 7) so parallel runs can be kept
    apart.
    """
    with flushed_redis_db(redis_db_url(7)) as url:
        yield url


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
