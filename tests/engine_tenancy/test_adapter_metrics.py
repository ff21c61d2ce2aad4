"""The engine's per-adapter-version Prometheus metrics: exact counts and the label cap."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families
from support.factories import write_adapter_dir
from support.live_api import live_engine
from support.tiny import TINY_MODEL, engine_settings, model_spec

from engine.runtime import build_runtime


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("lorafleet_engine_adapter_")
    }


def test_per_adapter_counters_are_exact_and_the_label_set_is_capped(
    model_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "loras"
    for i, name in enumerate(("math", "squad", "third")):
        write_adapter_dir(root, name, model_spec(model_dir), seed=i + 1)
    settings = engine_settings(model_dir, peft_source=str(root), metrics_max_adapters=2)
    with (
        live_engine(build_runtime(settings)) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client,
    ):
        usage: dict[str, list] = {}
        for model in (TINY_MODEL, "math", "math", "squad", "third"):
            out = client.completions.create(model=model, prompt="Hi", max_tokens=3)
            usage.setdefault(model, []).append(out.usage)
        samples = _samples(httpx.get(f"{url}/metrics").text)

    def count(label: str, models: list[str]) -> tuple[float, float, float]:
        rows = [u for m in models for u in usage[m]]
        return (
            float(len(rows)),
            float(sum(u.prompt_tokens for u in rows)),
            float(sum(u.completion_tokens for u in rows)),
        )

    for label, models in (
        (TINY_MODEL, [TINY_MODEL]),
        ("math", ["math"]),
        ("_other", ["squad", "third"]),
    ):
        requests, prompt, completion = count(label, models)
        key = (("adapter", label), ("outcome", "ok"))
        assert samples[("lorafleet_engine_adapter_requests_total", key)] == requests
        for kind, value in (("prompt", prompt), ("completion", completion)):
            key = (("adapter", label), ("kind", kind))
            assert samples[("lorafleet_engine_adapter_tokens_total", key)] == value
        hist = ("lorafleet_engine_adapter_request_seconds_count", (("adapter", label),))
        assert samples[hist] == requests
    labels = {dict(k[1]).get("adapter") for k in samples}
    assert labels == {TINY_MODEL, "math", "_other"}  # the cap: 2 names, then _other
