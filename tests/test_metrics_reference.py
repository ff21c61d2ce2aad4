"""``docs/METRICS.md`` is the truth about every ``/metrics`` endpoint (issue 9, item 20):
the registry API and the engine are scraped here over real HTTP; the pipeline's processes
(bridge, worker, beat) in ``tests/pipeline/test_pipeline_metrics.py``."""

from __future__ import annotations

from pathlib import Path

import httpx
from support.live_api import live_engine, serve_registry
from support.metrics_reference import assert_matches_reference, reference_rows
from support.tiny import engine_settings

from engine.runtime import build_runtime
from engine.tiny import init_tiny
from store.db import upgrade


def test_the_reference_covers_every_process() -> None:
    processes = {p for row in reference_rows().values() for p in row.processes}
    assert processes == {"registry", "engine", "bridge", "worker", "beat"}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "docs/METRICS.md" in readme


def test_registry_metrics_match_the_reference(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade(url)
    with serve_registry(url, tmp_path) as live:
        assert httpx.get(f"{live.base_url}/v1/health/live", timeout=10).status_code == 200
        text = httpx.get(f"{live.base_url}/metrics", timeout=10).text
    assert_matches_reference(text, "registry")


def test_engine_metrics_match_the_reference(tmp_path: Path) -> None:
    runtime = build_runtime(engine_settings(init_tiny(tmp_path / "model", seed=0)))
    with live_engine(runtime) as url:
        body = {"model": "tiny-llama", "prompt": "Hi", "max_tokens": 2}
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200
        text = httpx.get(f"{url}/metrics", timeout=10).text
    assert_matches_reference(text, "engine")
