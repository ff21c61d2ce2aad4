"""``examples/hf_peft_trainer.py`` (the trainer-integration doc's example) really trains an
adapter lorafleet accepts and really announces it on the ingest stream."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from events import streams
from events.models import JobCompleted, decode
from store.formats import load_adapter

ROOT = Path(__file__).resolve().parents[2]


def test_example_trains_uploads_and_announces(tmp_path: Path, redis_url: str) -> None:
    from engine.tiny import init_tiny

    model_dir = init_tiny(tmp_path / "tiny", std=0.2, seed=7)
    client = redis.Redis.from_url(redis_url)
    client.delete(streams.JOBS_STREAM)
    args = [
        sys.executable,
        str(ROOT / "examples" / "hf_peft_trainer.py"),
        "--base-model-dir", str(model_dir),
        "--base-model", "tiny-llama",
        "--data", str(ROOT / "examples" / "math.jsonl"),
        "--output-model", "acme/math-tutor@1.1.0",
        "--output-dir", str(tmp_path / "out"),
        "--redis-url", redis_url,
        "--upload-to", (tmp_path / "artifacts").as_uri(),
        "--steps", "30",
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]

    entries = client.xrange(streams.JOBS_STREAM)
    client.delete(streams.JOBS_STREAM)
    client.close()
    assert len(entries) == 1
    event = decode(entries[0][1])
    assert isinstance(event, JobCompleted)
    assert event.output_model == "acme/math-tutor@1.1.0" and event.base_model == "tiny-llama"
    assert event.metrics["final_loss"] < 2.0
    uploaded = Path(event.artifact_uri.removeprefix("file://"))
    assert uploaded.is_relative_to(tmp_path / "artifacts")
    adapter = load_adapter(uploaded)  # what the workers will parse and validate
    assert adapter.rank == 8 and len(adapter.target_modules) == 7
