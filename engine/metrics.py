"""Prometheus metrics of one engine, on a registry of its own (several engines may live in
one test process). Cache and scheduler numbers are read at scrape time from their counters,
so neither knows about Prometheus. Requests are counted by the status they were answered
with (a middleware, after the error handlers), so a 400, 404 or 429 counts as such."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.lora_cache import AdapterCache
from engine.scheduler import Scheduler
from engine.source import Catalog

PREFIX = "lorafleet_engine"
ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

prometheus_client.disable_created_metrics()  # no *_created twin of every counter


class _EngineCollector(Collector):
    def __init__(self, scheduler: Scheduler, cache: AdapterCache, catalog: Catalog) -> None:
        self.scheduler = scheduler
        self.cache = cache
        self.catalog = catalog

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self.scheduler
        yield GaugeMetricFamily(
            f"{PREFIX}_tokens_per_second",
            "Generated tokens per second (last 10 s).",
            value=s.tokens_per_second(),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_generated_tokens", "Tokens generated.", value=s.generated_tokens
        )
        yield CounterMetricFamily(
            f"{PREFIX}_prompt_tokens", "Prompt tokens prefilled.", value=s.prompt_tokens
        )
        depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth",
            "Requests waiting for / in the running batch.",
            labels=["state"],
        )
        depth.add_metric(["waiting"], s.waiting)
        depth.add_metric(["running"], s.running)
        yield depth

        resident = GaugeMetricFamily(
            f"{PREFIX}_lora_resident",
            "1 while an adapter is resident at a cache level.",
            labels=["adapter", "level"],
        )
        for name, levels in sorted(self.cache.residency().items()):
            for level in sorted(levels):
                resident.add_metric([name, level], 1)
        yield resident
        yield GaugeMetricFamily(
            f"{PREFIX}_lora_servable",
            "Adapters this engine can serve.",
            value=len(self.catalog.names()),
        )
        unservable = GaugeMetricFamily(
            f"{PREFIX}_unservable_adapters",
            "Adapters the source offers that this engine cannot serve, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(
            Tally(r.code for r in self.catalog.refusals().values()).items()
        ):
            unservable.add_metric([reason], count)
        yield unservable
        pins = GaugeMetricFamily(
            f"{PREFIX}_lora_pinned",
            "Pinned adapters by where they are held (gpu, cpu, not_resident).",
            labels=["level"],
        )
        for level, names in self.cache.pins(self.catalog.pinned).items():
            pins.add_metric([level], len(names))
        yield pins
        yield GaugeMetricFamily(
            f"{PREFIX}_aliases", "Aliases this engine routes.", value=len(self.catalog.aliases())
        )
        capacity = GaugeMetricFamily(
            f"{PREFIX}_lora_capacity", "Adapters each cache level holds.", labels=["level"]
        )
        capacity.add_metric(["cpu"], self.cache.cpu.capacity)
        capacity.add_metric(["gpu"], self.cache.gpu.n_slots)
        yield capacity

        levels = {"cpu": self.cache.cpu.stats, "gpu": self.cache.gpu.stats}
        for stat, help_text in (
            ("hits", "Cache hits."),
            ("misses", "Cache misses."),
            ("loads", "Adapters loaded into the level."),
            ("evictions", "Adapters evicted from the level."),
            ("load_seconds", "Seconds spent loading adapters into the level."),
        ):
            family = CounterMetricFamily(f"{PREFIX}_lora_cache_{stat}", help_text, labels=["level"])
            for level, stats in levels.items():
                family.add_metric([level], getattr(stats, stat))
            yield family


class EngineMetrics:
    """The engine's registry plus request-level instruments the server updates."""

    def __init__(self, scheduler: Scheduler, cache: AdapterCache, catalog: Catalog) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(scheduler, cache, catalog))
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Inference requests by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_seconds",
            "Inference request latency (until the last token).",
            ["endpoint"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Seconds from admission to a request's first generated token (streaming or not).",
            ["endpoint"],
            registry=self.registry,
            buckets=TTFT_BUCKETS,
        )


class CountRequests:
    """ASGI middleware: count each generation request once, by endpoint and the status it
    was answered with (500 when it raised past the error handlers).

    Plain ASGI on purpose: Starlette's ``BaseHTTPMiddleware`` hands the route a proxied
    ``receive`` that never reports ``http.disconnect``, so a non-streamed generation whose
    client left ran to its last token for nobody."""

    def __init__(self, app: ASGIApp, metrics: EngineMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = ENDPOINTS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
