"""Fixtures of the chaos suite (``make chaos``): a fresh, seeded PostgreSQL database per test,
Redis DB index ``LORAFLEET_TEST_REDIS_DB`` (default 9) of the machine's Redis, shared
artifact directories, and ``make_cluster`` which starts the pipeline's processes and always
stops them. Every checker report is printed at the end of the run and, when
``LORAFLEET_CHAOS_REPORT`` names a file, written there as JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from checker import REPORTS
from cluster import Cluster
from harness import fresh_database, write_artifacts
from support.services import flushed_redis_db, redis_db_url


@pytest.fixture
def chaos_db() -> Iterator[str]:
    """A brand-new, migrated and seeded PostgreSQL database (dropped afterwards)."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def shared_redis_url() -> Iterator[str]:
    """Our DB index of the machine's Redis, flushed before and after."""
    with flushed_redis_db(redis_db_url(9)) as url:
        yield url


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shared artifact directories (see ``harness.write_artifacts``)."""
    return write_artifacts(tmp_path_factory.mktemp("chaos-artifacts"))


@pytest.fixture
def make_cluster(
    tmp_path: Path, artifacts: dict[str, Path], chaos_db: str
) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(redis_url=..., blob_url=..., worker_db_url=..., extra_env=...)`` builds a
    ``Cluster`` on this test's database; every process it starts is stopped afterwards."""
    clusters: list[Cluster] = []

    def build(**kwargs: Any) -> Cluster:
        kwargs.setdefault("blob_url", f"file://{tmp_path / 'blobs'}")
        cluster = Cluster(tmp_path, db_url=chaos_db, artifacts=artifacts, **kwargs)
        clusters.append(cluster)
        return cluster

    try:
        yield build
    finally:
        for cluster in clusters:
            cluster.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORTS:
        return
    tr = terminalreporter
    tr.section("chaos: total-queue checker")
    header = f"{'test':<28}{'events':>7}{'faults':>7}{'lost':>6}{'dup':>5}{'unexp':>6}{'s':>7}"
    tr.write_line(header)
    for r in REPORTS:
        c = r.counts()
        tr.write_line(
            f"{r.name:<28}{c['events']:>7}{c['faults']:>7}{c['lost']:>6}"
            f"{c['duplicated']:>5}{c['unexpected']:>6}{c['seconds']:>7}"
        )
    path = os.environ.get("LORAFLEET_CHAOS_REPORT")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps([r.counts() for r in REPORTS], indent=2) + "\n")
