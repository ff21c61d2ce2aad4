"""engine.threads: the scheduler's OpenMP team is the engine process's only one, so its
barriers spin instead of sleeping (a decode step has ~150 of them)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import torch
from support.processes import Proc, lorafleet_argv, process_env, wait_for
from support.services import free_port

from engine.threads import in_passing_thread, serial_openmp


def test_serial_openmp_sets_only_the_calling_thread() -> None:
    before = torch.get_num_threads()
    assert in_passing_thread(lambda: (serial_openmp(), torch.get_num_threads())) == (True, 1)
    assert torch.get_num_threads() == before  # this thread's, and torch's own, unchanged
    if before > 1:  # a thread of its own still runs on torch's count
        assert in_passing_thread(torch.get_num_threads) == before


def test_in_passing_thread_returns_or_raises_what_the_call_did() -> None:
    assert in_passing_thread(lambda a, b: a + b, 2, b=3) == 5
    with pytest.raises(ValueError, match="bad"):
        in_passing_thread(lambda: (_ for _ in ()).throw(ValueError("bad")))


def voluntary_switches(pid: int) -> int:
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:  # a thread that ended meanwhile
            continue
        total += sum(int(x.split()[1]) for x in lines if x.startswith("voluntary_ctxt_switches"))
    return total


def test_a_served_engine_does_not_sleep_at_every_openmp_barrier(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Loaded in the main thread, the model left a second OpenMP pool behind, and libgomp,
    # with more pooled threads than CPUs, made the scheduler's team sleep and wake at each
    # barrier: 19 voluntary context switches per token on this model here (2 cores; 34 with
    # 4 layers, 73 with hidden 256); with one team 1.1 (3.5 with both cores busy elsewhere).
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    port = free_port()
    engine = Proc(
        "engine",
        lorafleet_argv(
            "engine",
            "serve",
            "--model-dir",
            str(tiny_model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ),  # fmt: skip
        process_env(
            {
                "NIM_PEFT_SOURCE": str(adapters),
                "NIM_SERVED_MODEL_NAME": "tiny-llama",
                "LORAFLEET_ENGINE_DEVICE": "cpu",
            }
        ),
        tmp_path,
    ).start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: urllib.request.urlopen(f"{url}/v1/health/ready"), 90, "engine ready")

        def complete(tokens: int) -> int:
            body = {"model": "tiny-llama", "prompt": "hi", "max_tokens": tokens}
            request = urllib.request.Request(
                f"{url}/v1/completions",
                json.dumps({**body, "ignore_eos": True, "temperature": 0}).encode(),
                {"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as reply:
                return json.loads(reply.read())["usage"]["completion_tokens"]

        complete(8)  # first-call set-up out of the count
        assert engine.popen is not None
        before = voluntary_switches(engine.popen.pid)
        tokens = complete(200)
        per_token = (voluntary_switches(engine.popen.pid) - before) / tokens
        assert tokens == 200
        assert per_token < 8, f"{per_token:.1f} voluntary context switches per token"
    finally:
        engine.stop()
