"""Load (run with the chaos suite's marker: ``pytest -m chaos tests/load``): 50 concurrent
API uploads while a 1,000-event burst goes through the pipeline, on real processes.

Sizes come from ``LORAFLEET_LOAD_UPLOADS`` / ``LORAFLEET_LOAD_EVENTS``; the figures are
printed, and written as JSON to ``LORAFLEET_LOAD_RESULTS`` when set (``bench/load.py``
writes ``bench/results/load.json``)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(1200)]


def _bench_load():
    spec = importlib.util.spec_from_file_location("bench_load", REPO / "bench" / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_concurrent_uploads_and_event_burst_lose_nothing(tmp_path: Path) -> None:
    load = _bench_load()
    events = int(os.environ.get("LORAFLEET_LOAD_EVENTS", "1000"))
    uploads = int(os.environ.get("LORAFLEET_LOAD_UPLOADS", "50"))
    result = load.run(events=events, uploads=uploads, workdir=tmp_path)
    load.print_table(result)
    if os.environ.get("LORAFLEET_LOAD_RESULTS"):
        Path(os.environ["LORAFLEET_LOAD_RESULTS"]).write_text(json.dumps(result, indent=2))
    checker = result["checker"]
    assert result["uploads_ok"] == uploads, result["upload_errors"]
    assert result["events"] == events
    assert (checker["lost"], checker["duplicated"], checker["unexpected"]) == (0, 0, 0), checker
    assert (checker["missing_blobs"], checker["missing_refresh"]) == (0, 0), checker
    assert result["api_latency"]["n"] == uploads
    assert result["event_to_outcome"]["n"] == events
    # Every ready outcome was timed, and no latency is negative (clocks are one machine's).
    assert result["event_to_ready"]["n"] == checker["outcomes"]["ready"]
    assert result["event_to_outcome"]["p50_ms"] > 0
