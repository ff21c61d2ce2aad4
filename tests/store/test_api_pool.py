"""The API's database connections under a burst: requests beyond what the API works on at
once (``LORAFLEET_API_THREADS``) wait for a worker thread; they do not open and close a
PostgreSQL connection each. Real uvicorn, real PostgreSQL, real concurrent HTTP clients."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import sqlalchemy as sa
from support.services import PG_ADMIN_URL, fresh_postgres_database

from store.api.server import run_registry_api
from store.db import upgrade
from store.settings import StoreSettings


def _sessions(database: str) -> int:
    """Connections PostgreSQL has accepted into ``database`` so far (its statistics are
    flushed a moment after a connection ends, so read until two reads agree)."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            last = None
            for _ in range(20):
                conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
                now = conn.execute(
                    sa.text("SELECT sessions FROM pg_stat_database WHERE datname = :d"),
                    {"d": database},
                ).scalar_one()
                if now == last:
                    return int(now)
                last = now
                time.sleep(1.1)
            return int(last)
    finally:
        admin.dispose()


async def _burst(base_url: str, token: str, clients: int, rounds: int) -> list[int]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, limits=limits, headers=headers) as client:
        statuses = []
        for _ in range(rounds):
            answers = await asyncio.gather(
                *(client.get("/v1/adapters", params={"page_size": 5}) for _ in range(clients))
            )
            statuses += [a.status_code for a in answers]
        return statuses


def test_a_burst_waits_for_threads_instead_of_opening_connections(tmp_path: Path) -> None:
    threads = 4
    with fresh_postgres_database("lorafleet_pool") as url:
        upgrade(url)
        database = url.rsplit("/", 1)[1]
        settings = StoreSettings(
            home=tmp_path, database_url=url, blob_url=f"file://{tmp_path}/b", api_threads=threads
        )
        with run_registry_api(settings) as (base_url, token):
            asyncio.run(_burst(base_url, token, 48, 1))  # the pool fills: opened once
            before = _sessions(database)
            statuses = asyncio.run(_burst(base_url, token, 48, 5))
            opened = _sessions(database) - before
    assert statuses == [200] * 240
    # Unbounded (anyio's 40 threads over a pool of 5) this opened 10-12 here; bounded, none
    # (one is allowed for a reconnect after a failed pre-ping).
    assert opened <= 1, f"{opened} connections opened for 240 requests"
