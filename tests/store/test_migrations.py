"""Migrations: applied programmatically, idempotent, matching the models, and an unmigrated
database refused with a message that says what to run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel
from support.services import free_port, fresh_postgres_database

import store.models  # noqa: F401
from store.db import downgrade, ensure_migrated, head_revision, make_engine, upgrade
from store.errors import DatabaseNotMigrated


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with fresh_postgres_database("lorafleet_mig") as url:
        yield url


def test_unmigrated_database_is_refused_with_the_fix(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        with pytest.raises(DatabaseNotMigrated) as info:
            ensure_migrated(engine)
        assert "is not migrated: run `lorafleet db upgrade`" in info.value.message
        assert info.value.http_status == 503
        assert upgrade(empty_db_url) == head_revision()
        assert ensure_migrated(engine) == head_revision()
        assert upgrade(empty_db_url) == head_revision()  # idempotent
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT generation FROM fleet_state")).scalar() == 0
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(empty_db_url: str) -> None:
    upgrade(empty_db_url)
    downgrade(empty_db_url, "base")
    engine = make_engine(empty_db_url)
    try:
        assert "adapter_versions" not in sa.inspect(engine).get_table_names()
        with pytest.raises(DatabaseNotMigrated, match="has no schema"):
            ensure_migrated(engine)
        upgrade(empty_db_url)
        assert "adapter_versions" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_models_match_the_migrations(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": False})
            diff = compare_metadata(ctx, SQLModel.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_session_scope_commits_or_rolls_back(engine) -> None:
    from store.db import session_scope
    from store.models import Namespace

    with session_scope(engine) as s:
        s.add(Namespace(name="kept", created_by="t"))
    with pytest.raises(RuntimeError):
        with session_scope(engine) as s:
            s.add(Namespace(name="dropped", created_by="t"))
            s.flush()
            raise RuntimeError("boom")
    with session_scope(engine) as s:
        names = set(s.execute(sa.select(Namespace.name)).scalars())
    assert names == {"kept"}


def test_unreachable_database_is_a_transient_error(free_port_number: int) -> None:
    from store.db import session_scope
    from store.errors import TransientError

    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port_number}/x")
    try:
        with pytest.raises(TransientError, match="database unavailable"):
            with session_scope(engine) as s:
                s.execute(sa.text("SELECT 1"))
        with pytest.raises(TransientError):
            ensure_migrated(engine)
    finally:
        engine.dispose()


@pytest.fixture
def free_port_number() -> int:
    return free_port()
