"""Usage metering at the engine: every finished request counted per (token, namespace,
adapter version served, alias named, hour), with its summed latency, flushed every ``LORAFLEET_ENGINE_USAGE_FLUSH_SECONDS`` to
``lorafleet:usage`` as a ``UsageFlush`` (``events.usage``).

A flush gets its id (``<boot id>-<sequence>``) when its counts are taken; one that could not
be sent (Redis down) is resent with the same id until it goes out, so the worker's fold,
idempotent by ``(engine_id, flush_id)``, never counts it twice. What a killed engine loses
is what it counted since its last successful flush: at most one interval. ``stop`` flushes
what is left, so a clean restart loses nothing.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
import structlog

from engine.scheduler import TokenDelta
from engine.tenancy import Caller
from events.streams import STREAM_MAXLEN, USAGE_STREAM
from events.usage import MAX_USAGE_ROWS, UsageCount, UsageFlush

log = structlog.get_logger(__name__)

# hour, token, namespace, adapter (served), alias (named)
Key = tuple[datetime, int | None, str | None, str | None, str | None]
_COUNTERS = ("requests", "prompt_tokens", "completion_tokens", "errors", "cancelled", "latency_ms")


@dataclass
class _Counts:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    cancelled: int = 0
    latency_ms: int = 0


def tenant_of(caller: Caller, adapter: str | None) -> str | None:
    """The namespace a request is billed to: its adapter's, or for the base model the
    caller's only namespace (None for a global or anonymous caller)."""
    if adapter is not None and "/" in adapter:
        return adapter.split("/", 1)[0]
    if not caller.all_namespaces and len(caller.namespaces) == 1:
        return next(iter(caller.namespaces))
    return None


class UsageMeter:
    """Thread-safe counters and the flushes they become."""

    def __init__(self, engine_id: str, base_model: str) -> None:
        self.engine_id = engine_id
        self.base_model = base_model
        self.boot_id = uuid.uuid4().hex[:12]
        self._sequence = 0
        self._counts: dict[Key, _Counts] = {}
        self._unsent: list[UsageFlush] = []
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self.flushes_sent = 0

    def record(
        self,
        caller: Caller,
        adapter: str | None,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        outcome: str,
        alias: str | None = None,
        latency_ms: int = 0,
    ) -> None:
        """Count one finished request (``outcome``: ``ok``, ``error`` or ``cancelled``) of
        ``adapter`` (the version served), under ``alias`` when the request named one."""
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        key = (hour, caller.token_id, tenant_of(caller, adapter), adapter, alias)
        with self._lock:
            c = self._counts.setdefault(key, _Counts())
            c.requests += 1
            c.prompt_tokens += prompt_tokens
            c.completion_tokens += completion_tokens
            c.errors += outcome == "error"
            c.cancelled += outcome == "cancelled"
            c.latency_ms += max(latency_ms, 0)

    def take(self) -> list[UsageFlush]:
        """Move the counts into new flushes (each with its id), queued to be sent."""
        with self._lock:
            counts, self._counts = self._counts, {}
            rows = [
                UsageCount(
                    hour=k[0],
                    token_id=k[1],
                    namespace=k[2],
                    adapter=k[3],
                    alias=k[4],
                    **{name: getattr(c, name) for name in _COUNTERS},
                )
                for k, c in counts.items()
            ]
            made = []
            for i in range(0, len(rows), MAX_USAGE_ROWS):
                self._sequence += 1
                made.append(
                    UsageFlush(
                        engine_id=self.engine_id,
                        flush_id=f"{self.boot_id}-{self._sequence}",
                        base_model=self.base_model,
                        counts=rows[i : i + MAX_USAGE_ROWS],
                    )
                )
            self._unsent.extend(made)
            return made

    def send(self, client: redis.Redis) -> int:
        """Take the counts and send every unsent flush, oldest first; a failed XADD leaves
        it (and those after it) for the next call. Returns how many went out."""
        with self._send_lock:
            self.take()
            sent = 0
            while True:
                with self._lock:
                    if not self._unsent:
                        return sent
                    flush = self._unsent[0]
                client.xadd(USAGE_STREAM, flush.encode(), maxlen=STREAM_MAXLEN, approximate=True)
                with self._lock:
                    self._unsent.pop(0)
                sent += 1
                self.flushes_sent += 1

    def run(self, redis_url: str, interval: float, stop: threading.Event) -> None:
        """Flush every ``interval`` seconds until ``stop``, then once more."""
        client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            while not stop.wait(interval):
                self._send_logged(client)
            self._send_logged(client)
        finally:
            client.close()

    def _send_logged(self, client: redis.Redis) -> None:
        try:
            self.send(client)
        except redis.RedisError as exc:
            log.warning("usage_flush_failed", error=str(exc), unsent=len(self._unsent))


async def metered(
    meter: UsageMeter | None,
    caller: Caller,
    adapter: str | None,
    stream: AsyncIterator[tuple[int, TokenDelta]],
    choices: int,
    prometheus: AdapterMetrics | None = None,
    base_model: str = "",
    alias: str | None = None,
) -> AsyncIterator[tuple[int, TokenDelta]]:
    """``stream`` unchanged; when it ends, counts the request once: its prompt and
    completion tokens and latency, as ``error`` (a failed choice, or an exception such as a
    full cache's 429), ``cancelled`` (left before every choice finished) or ``ok``, for
    ``adapter`` (the version served) under ``alias`` (the alias the request named, if any)."""
    prompt = completion = finished = 0
    outcome = "ok"
    started = time.perf_counter()
    try:
        async for index, delta in stream:
            if delta.finish_reason is not None:
                finished += 1
                prompt += delta.prompt_tokens
                completion += delta.completion_tokens
                if delta.finish_reason == "error":
                    outcome = "error"
            yield index, delta
    except BaseException as exc:
        is_cancel = isinstance(exc, GeneratorExit) or type(exc).__name__ == "CancelledError"
        if outcome == "ok":  # a choice that failed already made it an error
            outcome = "cancelled" if is_cancel else "error"
        raise
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        if outcome == "ok" and finished < choices:
            outcome = "cancelled"
        seconds = time.perf_counter() - started
        if prometheus is not None:
            prometheus.observe(
                adapter or base_model, outcome, prompt, completion, seconds, alias=alias
            )
        if meter is not None:
            meter.record(
                caller,
                adapter,
                prompt_tokens=prompt,
                completion_tokens=completion,
                outcome=outcome,
                alias=alias,
                latency_ms=round(seconds * 1000),
            )


class AdapterMetrics:
    """Prometheus per adapter version: requests by outcome, prompt and completion tokens,
    latency; and the same per alias arm (``alias`` named, ``adapter`` served) for requests
    that named an alias. The ``adapter`` and ``alias`` labels take at most ``max_adapters``
    distinct values together (the base model is one); later ones are counted under
    ``OTHER`` so a fleet of thousands of versions cannot blow up the scrape. Usage per
    tenant is ``/v1/usage``'s job."""

    OTHER = "_other"

    def __init__(self, registry: object, max_adapters: int) -> None:
        from prometheus_client import Counter, Histogram

        self.max_adapters = max_adapters
        self._labels: set[str] = set()
        self._lock = threading.Lock()
        self.requests = Counter(
            "lorafleet_engine_adapter_requests",
            "Finished generation requests per adapter version, by outcome",
            ["adapter", "outcome"],
            registry=registry,  # type: ignore[arg-type]
        )
        self.tokens = Counter(
            "lorafleet_engine_adapter_tokens",
            "Prompt and completion tokens per adapter version",
            ["adapter", "kind"],
            registry=registry,  # type: ignore[arg-type]
        )
        self.latency = Histogram(
            "lorafleet_engine_adapter_request_seconds",
            "Seconds from admission to the end of a request, per adapter version",
            ["adapter"],
            registry=registry,  # type: ignore[arg-type]
        )
        self.arm_requests = Counter(
            "lorafleet_engine_alias_requests",
            "Finished requests that named an alias, per arm (alias, version served) and outcome",
            ["alias", "adapter", "outcome"],
            registry=registry,  # type: ignore[arg-type]
        )
        self.arm_tokens = Counter(
            "lorafleet_engine_alias_tokens",
            "Prompt and completion tokens of requests that named an alias, per arm",
            ["alias", "adapter", "kind"],
            registry=registry,  # type: ignore[arg-type]
        )
        self.arm_latency = Histogram(
            "lorafleet_engine_alias_request_seconds",
            "Seconds from admission to the end of a request that named an alias, per arm",
            ["alias", "adapter"],
            registry=registry,  # type: ignore[arg-type]
        )

    def label(self, name: str) -> str:
        """``name``, or ``OTHER`` once ``max_adapters`` other names have been seen."""
        with self._lock:
            if name in self._labels:
                return name
            if len(self._labels) < self.max_adapters:
                self._labels.add(name)
                return name
        return self.OTHER

    def observe(
        self,
        name: str,
        outcome: str,
        prompt: int,
        completion: int,
        seconds: float,
        alias: str | None = None,
    ) -> None:
        label = self.label(name)
        self.requests.labels(label, outcome).inc()
        self.tokens.labels(label, "prompt").inc(prompt)
        self.tokens.labels(label, "completion").inc(completion)
        self.latency.labels(label).observe(seconds)
        if alias is None:
            return
        arm = (self.label(alias), label)
        self.arm_requests.labels(*arm, outcome).inc()
        self.arm_tokens.labels(*arm, "prompt").inc(prompt)
        self.arm_tokens.labels(*arm, "completion").inc(completion)
        self.arm_latency.labels(*arm).observe(seconds)
