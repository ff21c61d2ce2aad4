"""What resolving an alias costs one engine request (issue 13).

Two levels, medians over interleaved rounds after a warm-up:

  (a) ``Catalog.resolve`` in process, over a table of 1,000 adapters and 500 aliases:
      exact coordinates, an alias picked by weight (90/10), the same alias sticky on a
      route key (weighted rendezvous: one sha256 per target), and a sticky 8-target alias;
  (b) ``POST /v1/completions`` (``max_tokens=1``) to a live engine (tiny model, CPU) naming
      the exact coordinates, the alias, or the alias with ``user`` (sticky).

Reported: the median per call and its ratio to exact coordinates; for (b) the added ms.
Numbers depend on the machine; the ratios and differences are what to compare.

    .venv/bin/python bench/alias_resolution.py            # ~1 min on 2 cores
    .venv/bin/python bench/alias_resolution.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # after the repo: bench/engine.py

from engine_auth import serve_engine  # noqa: E402  # the live-engine helper of its sibling

from engine.aliases import Alias, Target  # noqa: E402
from engine.runtime import build_runtime  # noqa: E402
from engine.settings import EngineSettings  # noqa: E402
from engine.source import AdapterEntry, Catalog  # noqa: E402
from engine.tiny import init_tiny  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "alias_resolution.json"


def split(name: str, versions: list[str]) -> Alias:
    weights = [90, 10] if len(versions) == 2 else [100 // len(versions)] * len(versions)
    return Alias(name, tuple(Target(v, w) for v, w in zip(versions, weights, strict=True)))


def catalog_table() -> Catalog:
    """1,000 adapters (500 names x 2 versions) and one alias per name."""
    catalog = Catalog()
    aliases = {}
    for i in range(500):
        versions = [f"ns{i % 20}/bot{i}@1.{v}.0" for v in range(2)]
        for v in versions:
            catalog.put(AdapterEntry(v, fingerprint=v))
        aliases[f"ns{i % 20}/bot{i}@stable"] = split(f"ns{i % 20}/bot{i}@stable", versions)
    wide = [f"ns0/wide@1.{v}.0" for v in range(8)]
    for v in wide:
        catalog.put(AdapterEntry(v, fingerprint=v))
    aliases["ns0/wide@stable"] = split("ns0/wide@stable", wide)
    catalog.set_aliases(aliases)
    return catalog


def per_call_us(call: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n * 1e6


def bench_resolve(rounds: int, n: int) -> dict[str, float]:
    catalog = catalog_table()
    keys = [f"user-{i}" for i in range(n)]
    it = iter(range(10**12))
    cases: dict[str, Callable[[], object]] = {
        "exact": lambda: catalog.resolve("ns7/bot7@1.0.0"),
        "alias": lambda: catalog.resolve("ns7/bot7@stable"),
        "sticky alias": lambda: catalog.resolve("ns7/bot7@stable", keys[next(it) % n]),
        "sticky 8-target alias": lambda: catalog.resolve("ns0/wide@stable", keys[next(it) % n]),
    }
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for call in cases.values():
        per_call_us(call, n // 10)  # warm-up
    for _ in range(rounds):
        for name, call in cases.items():
            samples[name].append(per_call_us(call, n))
    return {k: statistics.median(v) for k, v in samples.items()}


def write_adapters(loras: Path, model_dir: Path, names: list[str]) -> None:
    """Small random rank-4 HF PEFT adapters for the model in ``model_dir``."""
    import torch

    from engine.checkpoint import read_model_config
    from store.formats import CanonicalAdapter
    from store.formats.hf_peft import write_hf_peft

    _, model_args = read_model_config(model_dir)
    shapes = model_args.module_shapes()
    for seed, name in enumerate(names):
        g = torch.Generator().manual_seed(seed)
        weights = {
            (layer, module): (
                torch.randn(4, n_in, generator=g) * 0.02,
                torch.randn(n_out, 4, generator=g) * 0.02,
            )
            for layer in range(model_args.n_layers)
            for module, (n_in, n_out) in shapes.items()
        }
        adapter = CanonicalAdapter("hf_peft", 4, 8.0, list(shapes), model_args.n_layers, weights)
        write_hf_peft(adapter, loras / name)


def bench_http(rounds: int, model_dir: Path, loras: Path) -> dict[str, float]:
    write_adapters(loras, model_dir, ["v1", "v2"])
    settings = EngineSettings(
        model_dir=model_dir,
        served_model_name="tiny-llama",
        device="cpu",
        peft_source=str(loras),
        max_seq_len=128,
    )
    runtime = build_runtime(settings)
    with serve_engine(runtime) as url, httpx.Client(base_url=url, timeout=30) as http:
        # A local directory has no registry aliases: give its catalog one (bench only).
        runtime.catalog.set_aliases({"bench/bot@stable": split("bench/bot@stable", ["v1", "v2"])})
        bodies = {
            "exact": {"model": "v1"},
            "alias": {"model": "bench/bot@stable"},
            "sticky alias": {"model": "bench/bot@stable", "user": "user-1"},
        }

        def timed(body: dict) -> float:
            start = time.perf_counter()
            response = http.post("/v1/completions", json={**body, "prompt": "Hi", "max_tokens": 1})
            elapsed = time.perf_counter() - start
            assert response.status_code == 200, response.text
            return elapsed * 1000

        for body in bodies.values():  # warm-up: both adapters resident
            for _ in range(10):
                timed(body)
        samples: dict[str, list[float]] = {k: [] for k in bodies}
        for _ in range(rounds):
            for name, body in bodies.items():
                samples[name].append(timed(body))
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (seconds)")
    args = parser.parse_args()
    rounds, n, http_rounds = (5, 2_000, 30) if args.quick else (15, 20_000, 300)
    resolve = bench_resolve(rounds, n)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = init_tiny(Path(tmp) / "model", seed=0)
        http = bench_http(http_rounds, model_dir, Path(tmp) / "loras")
    result = {
        "rounds": rounds,
        "calls_per_round": n,
        "http_rounds": http_rounds,
        "resolve_us": resolve,
        "resolve_ratio": {k: v / resolve["exact"] for k, v in resolve.items()},
        "request_ms": http,
        "request_added_ms": {k: v - http["exact"] for k, v in http.items()},
        "request_ratio": {k: v / http["exact"] for k, v in http.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Catalog.resolve, medians of {rounds} rounds x {n} calls")
    print(f"{'case':<28}{'us/call':>10}{'x exact':>10}")
    for k, v in resolve.items():
        print(f"{k:<28}{v:>10.2f}{result['resolve_ratio'][k]:>10.2f}")
    print(f"POST /v1/completions (max_tokens=1), medians of {http_rounds} interleaved rounds")
    print(f"{'case':<28}{'ms':>10}{'added ms':>10}{'x exact':>10}")
    for k, v in http.items():
        added, ratio = result["request_added_ms"][k], result["request_ratio"][k]
        print(f"{k:<28}{v:>10.3f}{added:>10.3f}{ratio:>10.3f}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
