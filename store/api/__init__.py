"""The registry's REST API (FastAPI): ``create_app`` is its composition root.

Routes live by concern: ``routes_catalog`` (namespaces, base models), ``routes_tokens``
(tokens, ``/v1/auth/whoami``),
``routes_transfer`` (upload, upload check, file downloads), ``routes_adapters``
(versions, approval, edits), ``routes_aliases`` (``namespace/name@alias``),
``routes_governance`` (history, restore, the access log), ``routes_ingest`` (what became of
each trainer announcement), ``routes_ops`` (health, metrics, fleet).
Every error leaves through ``errors`` in one JSON shape.

Auth: every route needs a bearer token except ``/v1/health/*`` and ``/metrics`` (aggregate
numbers only). See ``store.auth`` for roles and tenant isolation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
import structlog
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from store.api import (
    routes_adapters,
    routes_aliases,
    routes_catalog,
    routes_evaluation,
    routes_fleet_engines,
    routes_governance,
    routes_hf,
    routes_hf_commit,
    routes_hf_lfs,
    routes_ingest,
    routes_ops,
    routes_tokens,
    routes_transfer,
    routes_usage,
    routes_webhooks,
)
from store.api.body_limits import BoundedJsonBodies
from store.api.deps import AppState
from store.api.docs import install_docs
from store.api.errors import document_errors, install_error_handlers
from store.api.fleet_views import FleetViews
from store.blobs import BlobStore, open_blob_store
from store.db import ensure_migrated, make_engine
from store.metrics import ApiMetrics
from store.settings import StoreSettings, get_settings
from store.ui import install_console

log = structlog.get_logger(__name__)

__all__ = ["create_app"]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The routes (plain functions) run in anyio's worker threads: at most
    ``LORAFLEET_API_THREADS`` at once, as many as the database pool keeps connections.
    Unbounded (anyio's default is 40), a burst held more connections than the pool keeps,
    and each one past the pool was opened and closed for a single request: a PostgreSQL
    backend started per request, at the moment the API was busiest."""
    threads = app.state.lorafleet.settings.api_threads
    anyio.to_thread.current_default_thread_limiter().total_tokens = threads
    yield


def create_app(
    settings: StoreSettings | None = None,
    *,
    blobs: BlobStore | None = None,
    engine: Engine | None = None,
) -> FastAPI:
    """Build the API app on ``settings`` (or the process settings).

    ``engine`` and ``blobs`` default to the database and blob store the settings name.
    Raises ``DatabaseNotMigrated`` right here, before serving anything, when the database's
    schema is not at the head revision. The bootstrap admin token is
    ``settings.admin_token``; without one only database tokens authenticate (``lorafleet
    api`` generates and saves one in embedded mode).
    """
    settings = settings or get_settings()
    engine = engine or make_engine(settings.resolved_database_url(), pool_size=settings.api_threads)
    ensure_migrated(engine)
    blobs = blobs or open_blob_store(settings.resolved_blob_url(), settings)
    metrics = ApiMetrics(engine)

    app = FastAPI(
        lifespan=_lifespan,
        title="lorafleet registry",
        version="1",
        description="Adapter registry: namespaces, base models, LoRA adapter versions, "
        "approval, file downloads and the fleet view engines reconcile against.",
        docs_url=None,  # served by store.api.docs from local assets, not a CDN
        redoc_url=None,
    )
    app.state.lorafleet = AppState(
        settings=settings,
        engine=engine,
        blobs=blobs,
        admin_token=settings.admin_token,
        metrics=metrics,
        fleet_views=FleetViews(),
    )
    install_error_handlers(app)
    document_errors(app)
    install_docs(app)
    install_console(app)  # /ui: the review console
    app.add_middleware(metrics.middleware)
    app.add_middleware(BoundedJsonBodies, raw_body_prefixes=(routes_hf_lfs.RAW_BODY_PREFIX,))
    app.include_router(routes_ops.router)
    app.include_router(routes_catalog.router)
    app.include_router(routes_tokens.router)  # tokens and /v1/auth/whoami
    app.include_router(routes_usage.router)  # /v1/usage: metered engine usage
    app.include_router(routes_fleet_engines.router)  # /v1/fleet/engines: heartbeats
    app.include_router(routes_transfer.router)  # before ``/{adapter_id}`` takes its paths
    app.include_router(routes_aliases.router)  # ``/{ns}/{name}/aliases`` before ``/{version}``
    app.include_router(routes_governance.router)  # ``/{id}/history`` before ``/{ns}/{name}``
    app.include_router(routes_evaluation.router)  # eval sets, policy, ``/{id}/evaluation``
    app.include_router(routes_adapters.router)
    app.include_router(routes_ingest.router)
    app.include_router(routes_webhooks.router)
    app.include_router(routes_hf.router)  # /v1/hf: the Hugging Face Hub's protocol
    app.include_router(routes_hf_commit.router)
    app.include_router(routes_hf_lfs.router)
    log.info("api.created", database=engine.url.render_as_string(), blobs=repr(blobs))
    return app
