"""Prometheus metrics of the registry API.

Each app gets its own ``CollectorRegistry`` (several apps can live in one test process).
Request counters and the latency histogram are updated by a middleware; adapters by status
and bytes stored are read from the database at scrape time, so they are right even when
Celery workers, not this process, registered the adapters.

Under ``lorafleet api --workers N`` each worker process counts into prometheus_client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set by the parent before the workers
start), and whichever worker answers ``/metrics`` sums every worker's, the ones that have
exited included: a scrape sees the whole API, not the one process it happened to reach.
"""

from __future__ import annotations

import os
import time

import prometheus_client
import sqlalchemy as sa
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from store.models import AdapterFile, AdapterVersion
from store.multiprocess_metrics import MULTIPROC_ENV

log = structlog.get_logger(__name__)

prometheus_client.disable_created_metrics()  # no *_created twin of every counter


class _CatalogCollector(Collector):
    """Adapters by status and distinct bytes stored, queried when Prometheus scrapes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self):  # type: ignore[no-untyped-def]
        by_status = GaugeMetricFamily(
            "lorafleet_adapters", "Adapter versions by status.", labels=["status"]
        )
        stored = GaugeMetricFamily(
            "lorafleet_blob_bytes_stored", "Bytes of distinct blobs referenced by adapters."
        )
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(AdapterVersion.status, sa.func.count()).group_by(
                        AdapterVersion.status
                    )
                ).all()
                distinct = (
                    sa.select(AdapterFile.blob_key, sa.func.max(AdapterFile.size).label("size"))
                    .group_by(AdapterFile.blob_key)
                    .subquery()
                )
                total = conn.execute(sa.select(sa.func.sum(distinct.c.size))).scalar()
        except sa.exc.SQLAlchemyError as exc:
            # A scrape must not fail the whole endpoint because the database blinked.
            log.warning("metrics.catalog_unavailable", error=str(exc))
            return
        for status, count in rows:
            by_status.add_metric([status], count)
        stored.add_metric([], float(total or 0))
        yield by_status
        yield stored


class ApiMetrics:
    """The metric objects of one API app."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Histogram(
            "lorafleet_api_request_seconds",
            "API request latency by method, route and status.",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.uploads = Counter(
            "lorafleet_uploads", "Adapter uploads by outcome.", ["outcome"], registry=self.registry
        )
        self.upload_bytes = Counter(
            "lorafleet_upload_bytes", "Bytes received in adapter uploads.", registry=self.registry
        )
        self.downloads = Counter(
            "lorafleet_downloads", "Adapter file downloads started.", registry=self.registry
        )
        self.download_bytes = Counter(
            "lorafleet_download_bytes", "Bytes of adapter files served.", registry=self.registry
        )
        self.catalog = _CatalogCollector(engine)
        self.registry.register(self.catalog)

    def exposition(self) -> bytes:
        """What ``GET /metrics`` answers: this app's registry, or with
        ``PROMETHEUS_MULTIPROC_DIR`` set (API worker processes) every worker's counts summed,
        plus the catalog gauges."""
        if not os.environ.get(MULTIPROC_ENV):
            return prometheus_client.generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(self.catalog)
        return prometheus_client.generate_latest(registry)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """A plain ASGI middleware (not Starlette's ``BaseHTTPMiddleware``, whose task and
        streams per request cost more than a list page's query) that times every HTTP
        request until its answer is sent, labelled by its route template (not the raw
        path); an exception before the answer started counts as a 500."""

        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = 500

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, send=send_status, receive=receive)
            finally:
                template = getattr(scope.get("route"), "path", "unmatched")
                self.requests.labels(scope["method"], template, str(status)).observe(
                    time.perf_counter() - start
                )

        return timed
