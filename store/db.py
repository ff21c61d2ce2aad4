"""Database engine, sessions and migrations.

``make_engine`` is the one place that knows backend quirks (SQLite pragmas, PostgreSQL
pool checks). The schema is Alembic's: ``upgrade(url)`` applies the migrations shipped in
``store/migrations`` and ``ensure_migrated(engine)`` refuses to serve from a database whose
revision is not the head, with a message saying how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session

from store.errors import DatabaseNotMigrated, TransientError

log = structlog.get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` (SQLite or PostgreSQL) with lorafleet's connection settings.

    SQLite gets foreign keys enforced, WAL journaling and a busy timeout so that the API and
    workers of an embedded deployment can share one file; PostgreSQL gets pre-ping so a
    restarted server costs one retry instead of a stack trace.
    """
    if url.startswith("sqlite"):
        connect_args = kwargs.pop("connect_args", {})
        connect_args.setdefault("check_same_thread", False)
        connect_args.setdefault("timeout", 30)
        engine = sa.create_engine(url, connect_args=connect_args, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            if ":memory:" not in url:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(url, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A factory of sessions on ``engine`` whose objects stay readable after commit."""
    return sessionmaker(bind=engine, class_=Session, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work: commits if the block succeeds, rolls back if it raises. The store's
    services only flush; this (or a route's or task's one ``session.commit()``) commits.

    Connection-level database faults (server down, connection lost, serialization failure)
    come out as ``TransientError`` so tasks retry them; every other error passes unchanged.
    """
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except (OperationalError, InterfaceError) as exc:
        session.rollback()
        raise TransientError(f"database unavailable: {exc.orig or exc}") from exc
    except DBAPIError as exc:
        session.rollback()
        if exc.connection_invalidated:
            raise TransientError(f"database connection lost: {exc.orig or exc}") from exc
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def begin_write(session: Session) -> None:
    """Begin the session's transaction as a write transaction now.

    A no-op on PostgreSQL (rows are locked with ``SELECT ... FOR UPDATE``) and inside a
    transaction that already wrote. SQLite's driver (pysqlite) would begin the transaction
    only at the first INSERT/UPDATE/DELETE: ``BEGIN IMMEDIATE`` takes the database's write
    lock now (waiting up to the busy timeout for another writer), so the checks that follow
    and the writes they allow see one state, and a SAVEPOINT taken afterwards is nested in
    the transaction instead of becoming it (pysqlite would let its RELEASE commit).
    """
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return
    if not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def savepoint(session: Session) -> Iterator[None]:
    """A SAVEPOINT in the caller's transaction: an error inside the block (an
    ``IntegrityError`` of a lost race) rolls back the block only, never the caller's work."""
    begin_write(session)
    with session.begin_nested():
        yield


def _alembic_config(url: str | None = None) -> Config:
    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # configparser treats % as interpolation; escape it (URL-encoded passwords).
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest migration revision shipped with this code."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError("no Alembic migrations found in store/migrations")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database at ``engine`` is migrated to, None if never migrated."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _migrate(engine: Engine, url: str, step: Callable[[Config, str], None], revision: str) -> None:
    """Run the Alembic command ``step`` to ``revision`` in one transaction on ``engine``."""
    cfg = _alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        step(cfg, revision)


def upgrade(url: str, revision: str = "head") -> str | None:
    """Apply the migrations to the database at ``url`` up to ``revision``; idempotent.

    Returns the revision the database is at afterwards.
    """
    engine = make_engine(url)
    try:
        _migrate(engine, url, command.upgrade, revision)
        revision_now = current_revision(engine)
        log.info("db.upgraded", url=engine.url.render_as_string(), revision=revision_now)
        return revision_now
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    """Revert the database at ``url`` to ``revision`` (``base`` drops every table)."""
    engine = make_engine(url)
    try:
        _migrate(engine, url, command.downgrade, revision)
    finally:
        engine.dispose()


def ensure_migrated(engine: Engine) -> str:
    """Return the database's revision if it is the head; otherwise raise
    ``DatabaseNotMigrated`` telling the operator to run ``lorafleet db upgrade``."""
    try:
        current = current_revision(engine)
    except (OperationalError, InterfaceError) as exc:
        raise TransientError(f"database unavailable: {exc.orig or exc}") from exc
    head = head_revision()
    if current != head:
        where = engine.url.render_as_string(hide_password=True)
        state = "has no schema" if current is None else f"is at revision {current}, head is {head}"
        raise DatabaseNotMigrated(
            f"database at {where} is not migrated: run `lorafleet db upgrade` ({state})"
        )
    return current
