"""What tenancy and metering add to one engine request (issue 11).

A live registry (SQLite, in this process) and a live engine (tiny model, CPU) over real
HTTP. Per request, medians over interleaved rounds after a warm-up:

  (a) ``GET /v1/models`` with ``LORAFLEET_ENGINE_AUTH=none``            (no check)
  (b) the same with ``registry`` auth, the token cached                 (cache look-up)
  (c) the same with ``registry`` auth, a token the engine never saw     (one whoami round trip)
  (d) ``POST /v1/completions`` (4 tokens) with metering on vs off       (the meter's cost)

Added latency = (b) - (a) and (c) - (a); metering overhead = (d on) - (d off), and as a
ratio. Numbers depend on the machine; the ratios and differences are what to compare.

    .venv/bin/python bench/engine_auth.py            # ~1 min on 2 cores
    .venv/bin/python bench/engine_auth.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.runtime import EngineRuntime, build_runtime  # noqa: E402
from engine.settings import EngineSettings  # noqa: E402
from engine.tiny import init_tiny  # noqa: E402
from store.api.server import run_registry_api  # noqa: E402
from store.client import RegistryClient  # noqa: E402
from store.db import upgrade  # noqa: E402
from store.settings import StoreSettings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "engine_auth.json"


@contextmanager
def serve_engine(runtime: EngineRuntime) -> Iterator[str]:
    import socket

    import uvicorn

    from engine.server import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(runtime), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def timed(call: Callable[[], httpx.Response]) -> float:
    start = time.perf_counter()
    response = call()
    elapsed = time.perf_counter() - start
    assert response.status_code == 200, response.text
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (40 if args.quick else 300)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = init_tiny(root / "model", seed=0)
        url = f"sqlite:///{root / 'registry.db'}"
        upgrade(url)
        store = StoreSettings(home=root / "home", database_url=url, blob_url=f"file://{root}/b")
        with run_registry_api(store) as (api_url, admin_token):
            admin = RegistryClient(api_url, admin_token)
            admin.register_base_model(
                "tiny-llama", json.loads((model_dir / "config.json").read_text())
            )
            admin.create_namespace("acme", approval_policy="auto")
            cached = admin.create_token("reader", "acme", "cached")
            fresh = [admin.create_token("reader", "acme", f"t{i}") for i in range(rounds)]
            engine_token = admin.create_token("reader", None, "engine")
            common = dict(
                model_dir=model_dir,
                served_model_name="tiny-llama",
                device="cpu",
                max_seq_len=128,
                peft_source=api_url,
                token=engine_token,
            )
            open_rt = build_runtime(EngineSettings(**common, engine_auth="none"))
            auth_rt = build_runtime(EngineSettings(**common))
            result = measure(open_rt, auth_rt, cached, fresh, rounds)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)


def measure(
    open_rt: EngineRuntime, auth_rt: EngineRuntime, cached: str, fresh: list[str], rounds: int
) -> dict[str, Any]:
    samples: dict[str, list[float]] = {
        k: [] for k in ("none", "cached", "uncached", "meter_on", "meter_off")
    }
    body = {"model": "tiny-llama", "prompt": "Hi", "max_tokens": 4, "temperature": 0}
    with (
        serve_engine(open_rt) as open_url,
        serve_engine(auth_rt) as auth_url,
        httpx.Client() as http,
    ):
        bearer = {"Authorization": f"Bearer {cached}"}
        for _ in range(10):  # warm-up: connections, the cache, the model
            http.get(f"{open_url}/v1/models")
            http.get(f"{auth_url}/v1/models", headers=bearer)
            http.post(f"{open_url}/v1/completions", json=body)
        meter = open_rt.meter
        for i in range(rounds):
            samples["none"].append(timed(lambda: http.get(f"{open_url}/v1/models")))
            samples["cached"].append(
                timed(lambda: http.get(f"{auth_url}/v1/models", headers=bearer))
            )
            new = {"Authorization": f"Bearer {fresh[i]}"}
            samples["uncached"].append(
                timed(lambda new=new: http.get(f"{auth_url}/v1/models", headers=new))
            )
            order = ("meter_on", "meter_off") if i % 2 == 0 else ("meter_off", "meter_on")
            for case in order:  # alternated, so neither always runs first
                open_rt.meter = meter if case == "meter_on" else None
                samples[case].append(
                    timed(lambda: http.post(f"{open_url}/v1/completions", json=body))
                )
        open_rt.meter = meter
    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    return {
        "rounds": rounds,
        "meter_record_us": record_cost_us(),
        "median_ms": {k: round(v, 3) for k, v in med.items()},
        "added_ms": {
            "token_check_cached": round(med["cached"] - med["none"], 3),
            "token_check_uncached": round(med["uncached"] - med["none"], 3),
            "metering": round(med["meter_on"] - med["meter_off"], 3),
        },
        "ratio": {
            "cached_over_none": round(med["cached"] / med["none"], 3),
            "uncached_over_none": round(med["uncached"] / med["none"], 3),
            "meter_on_over_off": round(med["meter_on"] / med["meter_off"], 3),
        },
    }


def record_cost_us(calls: int = 100_000) -> float:
    """The meter's own cost per request: ``UsageMeter.record`` alone, in microseconds."""
    from engine.metering import UsageMeter
    from engine.tenancy import Caller

    meter = UsageMeter("bench", "tiny-llama")
    caller = Caller(all_namespaces=False, namespaces=frozenset({"acme"}), token_id=7)
    start = time.perf_counter()
    for _ in range(calls):
        meter.record(caller, "acme/bot@1.0.0", prompt_tokens=3, completion_tokens=4, outcome="ok")
    return round((time.perf_counter() - start) / calls * 1e6, 3)


def print_table(result: dict[str, Any]) -> None:
    m, a = result["median_ms"], result["added_ms"]
    print(f"rounds: {result['rounds']} (medians, ms per request)")
    print(f"{'case':<44}{'median ms':>10}{'added ms':>10}")
    print(f"{'GET /v1/models, auth none':<44}{m['none']:>10.3f}{'-':>10}")
    print(
        f"{'GET /v1/models, registry, cached token':<44}{m['cached']:>10.3f}"
        f"{a['token_check_cached']:>10.3f}"
    )
    print(
        f"{'GET /v1/models, registry, uncached token':<44}{m['uncached']:>10.3f}"
        f"{a['token_check_uncached']:>10.3f}"
    )
    print(f"{'POST /v1/completions (4 tok), meter off':<44}{m['meter_off']:>10.3f}{'-':>10}")
    print(
        f"{'POST /v1/completions (4 tok), meter on':<44}{m['meter_on']:>10.3f}"
        f"{a['metering']:>10.3f}"
    )
    print(f"UsageMeter.record alone: {result['meter_record_us']} us per request")
    print(json.dumps(result["ratio"]))


if __name__ == "__main__":
    main()
