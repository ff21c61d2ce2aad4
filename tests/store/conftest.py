"""Store fixtures: a migrated database per backend and a blob store per backend.

* ``db_url``: parametrized over ``sqlite`` and ``postgresql``. Each backend is migrated once
  per session with ``store.db.upgrade``; every test then starts from empty tables (the
  fleet generation reset to 0).
* ``engine`` / ``session``: a SQLAlchemy engine and a session on ``db_url``.
* ``blob_store``: parametrized over ``file`` (a temp dir) and ``s3`` (moto's S3 server spoken
  to by the real ``minio`` SDK), built with ``store.blobs.open_blob_store``.
* ``live_registry``: the registry API over real HTTP on ``db_url``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session
from support.live_api import LiveRegistry, serve_registry
from support.services import S3_ACCESS_KEY, S3_SECRET_KEY

from store.models import Package, PackageFile
from store.settings import StoreSettings

_engines: dict[str, Engine] = {}


@pytest.fixture(scope="session")
def migrated_sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file database migrated to head, shared by the session."""
    from store.db import upgrade

    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'lorafleet.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_url: str) -> str:
    """The session's PostgreSQL database migrated to head."""
    from store.db import upgrade

    upgrade(postgres_url)
    return postgres_url


def _engine_for(url: str) -> Engine:
    from store.db import make_engine

    if url not in _engines:
        _engines[url] = make_engine(url)
    return _engines[url]


def clean_database(engine: Engine) -> None:
    """Empty every lorafleet table (children first) and reset the fleet generation to 0."""
    from store.models import FleetState, SQLModel

    with engine.begin() as conn:
        for table in reversed(SQLModel.metadata.sorted_tables):
            if table.name == FleetState.__tablename__:
                conn.execute(table.update().values(generation=0))
            else:
                conn.execute(table.delete())


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated database with empty tables, on each backend in turn."""
    name = "migrated_sqlite_url" if request.param == "sqlite" else "migrated_postgres_url"
    url: str = request.getfixturevalue(name)
    clean_database(_engine_for(url))
    yield url


@pytest.fixture
def engine(db_url: str) -> Engine:
    """The (session-cached) engine on ``db_url``."""
    return _engine_for(db_url)


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session on ``engine``; closed (rolled back if left open) after the test."""
    with Session(engine, expire_on_commit=False) as s:
        yield s


@pytest.fixture(params=["file", "s3"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path):
    """A real, empty blob store: a directory, or a fresh bucket on the moto S3 server."""
    from store.blobs import open_blob_store

    if request.param == "file":
        return open_blob_store(f"file://{tmp_path / 'blobs'}", StoreSettings(home=tmp_path))
    endpoint: str = request.getfixturevalue("s3_endpoint")
    bucket: str = request.getfixturevalue("s3_bucket")
    settings = StoreSettings(
        home=tmp_path,
        s3_endpoint=endpoint,
        s3_access_key=S3_ACCESS_KEY,
        s3_secret_key=S3_SECRET_KEY,
        s3_secure=False,
    )
    return open_blob_store(f"s3://{bucket}", settings)


@pytest.fixture
def live_registry(db_url: str, engine: Engine, tmp_path: Path) -> Iterator[LiveRegistry]:
    """The registry API on ``db_url`` (SQLite and PostgreSQL) with a filesystem blob store."""
    with serve_registry(db_url, tmp_path, engine=engine) as live:
        yield live


@pytest.fixture(scope="session", autouse=True)
def _dispose_engines() -> Iterator[None]:
    yield
    for eng in _engines.values():
        eng.dispose()
    _engines.clear()


# --- registry building blocks ------------------------------------------------------------

BASE = "tiny-llama"


def fake_package(seed: int, *, size: int = 100, files: int = 1) -> Package:
    """A ``Package`` value for service-level tests that do not need real blobs: distinct
    seeds give distinct content digests, equal seeds equal ones."""
    from store.packaging import content_digest

    originals = [
        PackageFile(
            f"weights-{i}.bin", "original", f"{seed:060x}{i:04x}", size, f"sha256/{seed}-{i}"
        )
        for i in range(files)
    ]
    canonical = PackageFile(
        "adapter_model.safetensors", "canonical", f"{seed:064x}", size, f"sha256/c{seed}"
    )
    return Package(
        source_format="hf_peft",
        rank=4,
        alpha=8.0,
        target_modules=["q_proj", "v_proj"],
        files=(*originals, canonical),
        manifest={"rank": 4, "seed": seed},
        manifest_sha256=f"{seed:064x}",
        content_sha256=content_digest({f.path: f.sha256 for f in originals}),
    )


@pytest.fixture
def base_model(session: Session) -> str:
    """The tiny Llama base model, registered."""
    from support.tiny import tiny_hf_config

    from store.tenancy import register_base_model

    register_base_model(session, BASE, tiny_hf_config(), actor="admin")
    session.commit()
    return BASE


@pytest.fixture
def auto_ns(session: Session) -> str:
    """Namespace ``acme`` with the ``auto`` approval policy."""
    from store.tenancy import create_namespace

    create_namespace(session, "acme", approval_policy="auto", actor="admin")
    session.commit()
    return "acme"


@pytest.fixture
def manual_ns(session: Session) -> str:
    """Namespace ``bank`` with the ``manual`` approval policy."""
    from store.tenancy import create_namespace

    create_namespace(session, "bank", approval_policy="manual", actor="admin")
    session.commit()
    return "bank"


@pytest.fixture
def make_package():
    """``fake_package(seed, size=..., files=...)`` for tests."""
    return fake_package
