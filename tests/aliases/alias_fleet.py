"""What the alias suite shares: ``AliasFleet``, a live registry (PostgreSQL) with its real
Celery worker and beat (relaying the outbox to ``lorafleet:fleet:refresh`` and folding
usage), two engines following the refresh stream, and helpers to set aliases, pin, upload
and call the engines through the official ``openai`` client. Test modules import it as
``from alias_fleet import ...`` (pytest puts this directory on ``sys.path``)."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from support.factories import write_adapter_dir
from support.live_api import LiveRegistry, live_engine
from support.processes import wait_for
from support.tiny import TINY_MODEL, engine_settings, model_spec

from engine.aliases import SERVED_MODEL_HEADER
from engine.runtime import EngineRuntime, build_runtime

BOT = "acme/bot"


@dataclass
class Engine:
    """One live engine: its id, runtime and URL."""

    engine_id: str
    runtime: EngineRuntime
    url: str

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/v1/health/ready", timeout=10).json()

    def client(self, token: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=token, max_retries=0)

    def cpu_misses(self) -> int:
        """Request-path loads into the CPU cache so far (a prefetch is not a miss)."""
        return self.runtime.cache.cpu.stats.misses


@dataclass
class AliasFleet:
    registry: LiveRegistry
    model_dir: Path
    root: Path
    redis_url: str
    engines: list[Engine] = field(default_factory=list)
    readers: dict[str, str] = field(default_factory=dict)
    writer: str = ""
    seeds: int = 10

    # -- the registry side ---------------------------------------------------------------

    def upload(self, namespace: str, name: str, version: str) -> dict[str, Any]:
        """A new ready version (auto approval), through the registry API."""
        self.seeds += 1
        src = write_adapter_dir(
            self.root / "uploads" / f"{namespace}-{name}-{version}",
            name,
            model_spec(self.model_dir),
            seed=self.seeds,
        )
        entity = self.registry.admin.upload_adapter(
            src, namespace=namespace, name=name, version=version, base_model=TINY_MODEL
        )
        assert entity["status"] == "ready", entity
        return entity

    def put_alias(self, alias: str, targets: dict[str, int], pinned: bool = False) -> dict:
        """``PUT /v1/adapters/acme/bot/aliases/{alias}`` as acme's writer."""
        body = {
            "targets": [{"version": v, "weight": w} for v, w in targets.items()],
            "pinned": pinned,
        }
        with self.registry.http(self.writer) as http:
            response = http.put(f"/v1/adapters/{BOT}/aliases/{alias}", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def pin(self, adapter_id: str, pinned: bool = True) -> dict[str, Any]:
        with self.registry.http(self.writer) as http:
            response = http.patch(f"/v1/adapters/{adapter_id}", json={"pinned": pinned})
        assert response.status_code == 200, response.text
        return response.json()

    def generation(self) -> int:
        """The registry's fleet generation now."""
        with self.registry.http(self.registry.admin_token) as http:
            response = http.get("/v1/fleet", params={"base_model": TINY_MODEL})
        assert response.status_code == 200, response.text
        return int(response.json()["generation"])

    def synced(self, generation: int | None = None, timeout: float = 60.0) -> int:
        """Wait until every engine reports ``generation`` (default: the registry's now)."""
        target = self.generation() if generation is None else generation
        for engine in self.engines:
            wait_for(
                lambda e=engine: (e.health().get("generation") or 0) >= target,
                timeout,
                f"{engine.engine_id} at generation {target}",
            )
        return target

    # -- the engine side -----------------------------------------------------------------

    def usage(self, token: str, **params: str) -> list[dict[str, Any]]:
        with self.registry.http(token) as http:
            response = http.get("/v1/usage", params=params)
        assert response.status_code == 200, response.text
        return response.json()["data"]


def start_engine(fleet: AliasFleet, stack: ExitStack, engine_id: str) -> Engine:
    """An engine of ``fleet`` (registry source, refresh stream, usage, heartbeat)."""
    settings = engine_settings(
        fleet.model_dir,
        peft_source=fleet.registry.base_url,
        token=fleet.registry.mint("reader", None, f"engine-{engine_id}"),
        redis_url=fleet.redis_url,
        download_dir=fleet.root / f"downloads-{engine_id}",
        engine_id=engine_id,
        max_gpu_loras=3,
        max_cpu_loras=4,
        usage_flush_seconds=0.5,
        heartbeat_seconds=0.5,
    )
    runtime = build_runtime(settings)
    url = stack.enter_context(live_engine(runtime))
    return Engine(engine_id, runtime, url)


def served(client: openai.OpenAI, model: str, **kwargs: Any) -> str:
    """One ``max_tokens=1`` completion; the coordinates the engine says it served."""
    raw = client.completions.with_raw_response.create(
        model=model, prompt="Hi", max_tokens=1, **kwargs
    )
    raw.parse()  # a well-formed completion
    return raw.headers[SERVED_MODEL_HEADER]


def metric_samples(url: str, prefix: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(prefix)
    }
