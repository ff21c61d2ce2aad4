"""The engine's composition root, as ``workers/runtime.py`` is the workers'.

``build_runtime(settings)`` wires model, tokenizer, LoRA slots, caches, PEFT source,
reconciler and scheduler; ``EngineRuntime.start``/``stop`` run the background parts (model
thread, refresh subscriber, periodic reconciliation). ``engine/server.py`` puts the HTTP API
on top; ``engine/cli.py`` only parses commands.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import torch

from engine.allocator import keep_freed_blocks
from engine.heartbeat import run_heartbeat
from engine.lora_cache import AdapterCache, CpuCache, GpuSlots
from engine.metering import AdapterMetrics, UsageMeter
from engine.metrics import EngineMetrics
from engine.refresh import Reconciler
from engine.scheduler import Scheduler
from engine.settings import EngineSettings
from engine.source import (
    Catalog,
    LocalDirectorySource,
    PeftSource,
    RegistrySource,
    catalog_loader,
    check_entry,
)
from engine.tenancy import TokenVerifier
from engine.threads import serial
from events.heartbeat import EngineHeartbeat
from events.refresh import RefreshFollower
from events.revocations import RevocationFollower, TokenRevoked
from store.formats import BaseModelSpec

if TYPE_CHECKING:  # annotations only: build_runtime imports the model code when it runs
    from engine.lora import LoraWeights
    from engine.model import ModelArgs, Transformer

log = structlog.get_logger(__name__)

FIRST_RECONCILE_RETRY_S = 2.0  # seconds between tries while no reconciliation has succeeded
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class EngineRuntime:
    """Everything one engine serves with. ``ready`` is true once ``start`` has run and a
    reconciliation with the PEFT source has succeeded; until then ``not_ready_reason`` says
    why (the first reconciliation is retried in the background)."""

    model_name: str
    tokenizer: object
    scheduler: Scheduler
    cache: AdapterCache
    catalog: Catalog
    reconciler: Reconciler
    max_seq_len: int
    refresh_interval: float | None = None
    redis_url: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    started: bool = False
    source_verified: bool = False  # build_runtime(verify_source=True) checked it already
    subscriber: RefreshFollower | None = None
    auth: TokenVerifier | None = None  # None: LORAFLEET_ENGINE_AUTH=none, anyone may call
    revocations: RevocationFollower | None = None
    meter: UsageMeter | None = None  # counts finished requests; flushed when redis_url is set
    usage_flush_seconds: float = 5.0
    metrics_max_adapters: int = 64
    engine_id: str = "engine"
    heartbeat_seconds: float = 5.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.metrics = EngineMetrics(self.scheduler, self.cache, self.catalog)
        self.adapter_metrics = AdapterMetrics(self.metrics.registry, self.metrics_max_adapters)

    @property
    def ready(self) -> bool:
        """Started, and the served set came from a successful reconciliation."""
        return self.started and self.reconciler.synced

    @property
    def not_ready_reason(self) -> str | None:
        """Why the engine is not ready (None when it is)."""
        if not self.started:
            return "the engine is starting"
        if not self.reconciler.synced:
            return (
                "no successful reconciliation with the PEFT source yet: "
                f"{self.reconciler.last_error or 'in progress'}"
            )
        return None

    def start(self) -> None:
        """Check the source (``UnknownBaseModel`` is fatal), reconcile with it, start the model
        thread, the refresh subscriber (when a Redis URL is set) and periodic reconciliation
        (when an interval is set). A failed first reconciliation is retried until it works."""
        self._stop.clear()
        if not self.source_verified:
            self.reconciler.source.verify()
        first = self.reconciler.reconcile()
        # Pinned adapters take their GPU slots now, while no scheduler step can run.
        self.cache.preload_gpu()
        self.scheduler.start()
        if self.redis_url:
            self.subscriber = RefreshFollower(
                self.redis_url,
                self.model_name,
                on_event=self.reconciler.apply_event,
                on_connect=self.reconciler.reconcile,
                stop=self._stop,
                name="engine-refresh",
            )
            self._spawn("lorafleet-refresh", self.subscriber.run)
        self._follow_revocations()
        if self.redis_url and self.meter is not None:
            meter, url, every = self.meter, self.redis_url, self.usage_flush_seconds
            self._spawn("lorafleet-usage", lambda: meter.run(url, every, self._stop))
        if self.redis_url:
            url, beat = self.redis_url, self.heartbeat_seconds
            self._spawn(
                "lorafleet-heartbeat",
                lambda: run_heartbeat(url, self.heartbeat, beat, self._stop),
            )
        if self.refresh_interval:
            interval = self.refresh_interval
            self._spawn(
                "lorafleet-reconcile", lambda: self.reconciler.run_periodic(interval, self._stop)
            )
        if not first.ok:
            self._spawn("lorafleet-first-reconcile", self._retry_until_synced)
        self.started = True
        self._warn_without_live_source()
        log.info(
            "engine_started",
            model=self.model_name,
            ready=self.ready,
            adapters=len(self.catalog.names()),
            unservable=len(self.catalog.refusals()),
        )

    def heartbeat(self, ttl: float) -> EngineHeartbeat:
        """What this engine reports about itself now (``events.heartbeat``)."""
        residency = self.cache.residency()
        return EngineHeartbeat(
            engine_id=self.engine_id,
            base_model=self.model_name,
            generation=self.catalog.generation,
            ready=self.ready,
            servable=len(self.catalog.names()),
            gpu=sorted(n for n, levels in residency.items() if "gpu" in levels),
            cpu=sorted(n for n, levels in residency.items() if "cpu" in levels),
            ttl_seconds=ttl,
        )

    def _follow_revocations(self) -> None:
        """Drop a revoked token's cached answer the moment the registry announces it."""
        if self.auth is None:
            log.warning(
                "engine_auth_disabled",
                model=self.model_name,
                hint="LORAFLEET_ENGINE_AUTH=none: every caller may use every adapter",
            )
            return
        if not self.redis_url:
            log.warning(
                "engine_auth_no_revocations",
                hint="without LORAFLEET_REDIS_URL a revoked token keeps working here for up "
                f"to LORAFLEET_ENGINE_AUTH_CACHE_SECONDS ({self.auth.cache_seconds}s)",
            )
            return
        verifier = self.auth

        def revoked(event: TokenRevoked) -> None:
            verifier.drop_token(event.token_id)

        self.revocations = RevocationFollower(
            self.redis_url, revoked, verifier.clear, stop=self._stop, name="engine-revocations"
        )
        self._spawn("lorafleet-revocations", self.revocations.run)

    def _retry_until_synced(self) -> None:
        delay = min(self.refresh_interval or FIRST_RECONCILE_RETRY_S, FIRST_RECONCILE_RETRY_S)
        while not self.reconciler.synced and not self._stop.wait(delay):
            if self.reconciler.reconcile().ok:
                log.info("engine_ready", model=self.model_name, adapters=len(self.catalog.names()))

    def _warn_without_live_source(self) -> None:
        if self.redis_url or self.refresh_interval:
            return
        log.warning(
            "engine_no_live_source",
            model=self.model_name,
            hint="neither LORAFLEET_REDIS_URL nor NIM_PEFT_REFRESH_INTERVAL is set: adapters "
            "approved or removed after this start are not seen until the engine restarts",
        )

    def stop(self) -> None:
        """Stop every background thread; in-flight requests finish with ``abort``."""
        self.started = False
        self._stop.set()
        self.scheduler.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def _spawn(self, name: str, target: Callable[[], object]) -> None:
        # Background loops run torch (if at all) on one thread: the scheduler's OpenMP
        # team is to be the process's only one (engine.threads).
        thread = threading.Thread(target=serial(target), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)


def make_source(settings: EngineSettings, model_name: str, spec: BaseModelSpec) -> PeftSource:
    """The PEFT source ``NIM_PEFT_SOURCE`` names (an empty local source when unset). It
    validates every adapter it parses against ``spec`` and the engine's limits
    (``EngineSettings.adapter_limits``: a rank refusal names ``NIM_MAX_LORA_RANK``)."""
    limits = settings.adapter_limits()
    if settings.source_is_registry():
        from store.client import RegistryClient

        client = RegistryClient(settings.peft_source, token=settings.token)  # type: ignore[arg-type]
        return RegistrySource(
            client, model_name, spec, download_dir=settings.download_dir, limits=limits
        )
    root = Path(settings.peft_source) if settings.peft_source else Path(".lorafleet/loras")
    return LocalDirectorySource(root, spec, limits)


def build_runtime(
    settings: EngineSettings, source: PeftSource | None = None, *, verify_source: bool = False
) -> EngineRuntime:
    """Load the model in ``LORAFLEET_ENGINE_MODEL_DIR`` and wire every engine part. Its
    ``config.json`` is read once (``read_model_config``). With ``verify_source`` the source
    is verified before the weights are loaded, so a wrong served name
    (``UnknownBaseModel``) fails fast."""
    from engine.checkpoint import read_model_config
    from engine.tokenizer import Tokenizer

    if settings.model_dir is None:
        raise ValueError("LORAFLEET_ENGINE_MODEL_DIR is not set")
    model_dir = Path(settings.model_dir)
    spec, args = read_model_config(model_dir)
    name = settings.resolved_model_name()
    auth_mode = settings.resolved_auth()  # a contradictory setting fails before loading
    source = source or make_source(settings, name, spec)
    if verify_source:
        source.verify()
    device = settings.resolved_device()
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu:
        log.info("engine_malloc", policy=keep_freed_blocks())
    model, weights = _load_model_with_slots(
        settings, model_dir, args, device, prepack=settings.prepack and on_cpu
    )
    tokenizer = Tokenizer(model_dir)
    limits = settings.adapter_limits()
    catalog = Catalog()
    cpu = CpuCache(settings.max_cpu_loras, catalog_loader(catalog, source))
    cache = AdapterCache(cpu, GpuSlots(weights, settings.max_gpu_loras))
    eos = sorted(set(args.eos_token_ids) | set(tokenizer.eos_ids))
    scheduler = Scheduler(
        model,
        cache,
        max_batch=settings.max_batch,
        max_seq_len=settings.max_seq_len,
        max_request_tokens=settings.max_request_tokens,
        max_waiting=settings.max_waiting,
        max_rows_per_request=settings.max_rows_per_request,
        eos_token_ids=eos,
        decode=tokenizer.decode,
        device=device,
        vocab_size=args.vocab_size,
    )
    return EngineRuntime(
        model_name=name,
        tokenizer=tokenizer,
        scheduler=scheduler,
        cache=cache,
        catalog=catalog,
        reconciler=Reconciler(source, catalog, cache, fit=lambda e: check_entry(e, name, limits)),
        max_seq_len=settings.max_seq_len,
        refresh_interval=settings.peft_refresh_interval,
        redis_url=settings.redis_url,
        source_verified=verify_source,
        auth=make_verifier(settings) if auth_mode == "registry" else None,
        meter=UsageMeter(settings.resolved_engine_id(), name),
        usage_flush_seconds=settings.usage_flush_seconds,
        metrics_max_adapters=settings.metrics_max_adapters,
        engine_id=settings.resolved_engine_id(),
        heartbeat_seconds=settings.heartbeat_seconds,
    )


def make_verifier(settings: EngineSettings) -> TokenVerifier:
    """The token check against the registry ``NIM_PEFT_SOURCE`` names."""
    return TokenVerifier(
        settings.peft_source,  # type: ignore[arg-type]  # resolved_auth checked it is a URL
        cache_seconds=settings.auth_cache_seconds,
        stale_seconds=settings.auth_stale_seconds,
    )


def _load_model_with_slots(
    settings: EngineSettings, model_dir: Path, args: ModelArgs, device: str, *, prepack: bool
) -> tuple[Transformer, LoraWeights]:
    """The model's weights on ``device`` with its KV cache and ``NIM_MAX_GPU_LORAS`` LoRA
    slots of rank ``NIM_MAX_LORA_RANK`` attached; ``prepack``: the linear weights packed
    for oneDNN (CPU only)."""
    from engine.checkpoint import load_model
    from engine.lora import LoraWeights

    dtype = _DTYPES[settings.dtype] if settings.dtype else None
    model, _ = load_model(model_dir, device, dtype, args=args)
    if prepack:
        packed = model.prepack(release=True)
        if packed:
            log.info(
                "engine_weights_packed", linear_layers=packed, dtype=str(model.output.weight.dtype)
            )
        else:
            log.warning(
                "engine_weights_not_packed",
                dtype=str(model.output.weight.dtype),
                reason="oneDNN cannot pack this dtype on this CPU; MKL's GEMM is used",
            )
    model.setup_caches(settings.max_batch, settings.max_seq_len)
    weights = LoraWeights(
        args.module_shapes(),
        args.n_layers,
        settings.max_gpu_loras,
        settings.max_lora_rank,
        device,
        model.output.weight.dtype,
    )
    model.attach_lora(weights)
    return model, weights
