"""Serving side by side: lorafleet's engine and vLLM's CPU build on the same weights and
adapters, through each server's OpenAI API (issue 16, goal 3).

One random Llama (hidden 512, 8 layers, 8 heads: head_dim 64, which vLLM's CPU attention
needs; vocab 32000; fp32) and ``--adapters`` random rank-``--rank`` adapters on all seven
projections, written once as HF PEFT directories. Each server is started in turn (ours:
``lorafleet engine serve`` with the adapters as a NIM-layout local source; vLLM:
``.venv-vllm``, ``scripts/install_vllm.sh``, started by ``tests/support/ecosystem.start_vllm``
with every adapter in ``--lora-modules``), warmed up, then measured over ``--rounds``
interleaved rounds of every (C, traffic) cell: C concurrent streamed completions, each on
its own adapter (``lora``) or all on the base model (``base``), ``--prompt-tokens`` in and
``--max-tokens`` out (``ignore_eos``).

Printed per server and cell: output tokens/s, TTFT p50/p99, request latency p50/p99, server
CPU seconds per output token (the server's whole process tree); then ours/vLLM and LoRA/base
(medians over rounds), and the cold-adapter cost: the first-token time of a request on an
adapter neither server has used yet, minus that of a warm one (single stream).

The physical floor: one decode step streams every weight once (linear layers + lm_head, the
adapters' extra bytes aside), so C streams cannot beat ``C * bandwidth / weight_bytes``
tokens/s, with the bandwidth measured here by a large ``torch`` copy (read + write) in the
same run; each server's base-model throughput is printed as a fraction of that floor.

    .venv/bin/python bench/serving.py                       # both servers (~10 min on 2 cores)
    .venv/bin/python bench/serving.py --rounds 1 --concurrency 16
    .venv/bin/python bench/serving.py --skip-vllm           # ours only
    .venv/bin/python bench/serving.py --device cuda --skip-vllm   # the GPU path

Writes ``bench/results/serving.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "serving.json"
sys.path[:0] = [str(REPO / "tests"), str(REPO), str(REPO / "bench")]

import httpx  # noqa: E402
import torch  # noqa: E402
from cpu import tree_cpu_seconds  # noqa: E402
from percentiles import percentile  # noqa: E402

from engine.settings import check_device  # noqa: E402

MODEL = "bench-llama"
SHAPE = dict(hidden_size=512, layers=8, heads=8, intermediate_size=1536, vocab_size=32000)


def measure_bandwidth(device: str, mib: int = 512, reps: int = 5) -> float:
    """Bytes a second a large tensor copy moves (read + write), best of ``reps``."""
    src = torch.empty(mib << 18, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(reps + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def prepare(root: Path, n_adapters: int, rank: int) -> tuple[Path, Path, int]:
    """Write the model and the adapters; return (model dir, adapters dir, weight bytes a
    decode step streams)."""
    from engine.model import ModelArgs
    from engine.tiny import init_tiny
    from store.formats import SUPPORTED_MODULES, CanonicalAdapter, write_canonical

    model_dir = init_tiny(root / "models" / MODEL, max_position_embeddings=512, **SHAPE)
    # The byte-level tokenizer has 272 tokens; ids past it decode to no text, so a random
    # model would stream empty chunks (no TTFT to see). Zeroed lm_head rows past it keep the
    # vocab-32000 cost and make greedy decoding pick tokens that have text.
    from safetensors.torch import load_file, save_file

    from engine.tiny import SPECIAL_TOKENS

    weights_file = model_dir / "model.safetensors"
    sd = load_file(str(weights_file))
    sd["lm_head.weight"][256 + len(SPECIAL_TOKENS) :] = 0.0
    save_file(sd, str(weights_file), metadata={"format": "pt"})
    args = ModelArgs.from_hf_config(json.loads((model_dir / "config.json").read_text()))
    adapters = root / "adapters"
    for i in range(n_adapters + 1):  # the last one stays cold until the cold-start probe
        g = torch.Generator().manual_seed(1000 + i)
        weights = {
            (layer, module): (
                torch.randn(rank, n_in, generator=g) * 0.02,
                torch.randn(n_out, rank, generator=g) * 0.02,
            )
            for layer in range(args.n_layers)
            for module, (n_in, n_out) in args.module_shapes().items()
        }
        adapter = CanonicalAdapter(
            "hf_peft", rank, 2.0 * rank, list(SUPPORTED_MODULES), args.n_layers, weights
        )
        write_canonical(adapter, adapters / adapter_name(i), base_model_name=MODEL)
    linear = args.n_layers * sum(i * o for i, o in args.module_shapes().values())
    weight_bytes = 4 * (linear + args.dim * args.vocab_size)  # fp32, + lm_head
    return model_dir, adapters, weight_bytes


def adapter_name(i: int) -> str:
    return f"bench-lora-{i:02d}"


async def one_stream(
    client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int
) -> dict[str, float]:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = None
    chunks = 0
    tokens = None
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{model}: {response.status_code} {await response.aread()!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices"):
                # A chunk per token; random weights give byte tokens whose text may be empty
                # until a UTF-8 character completes, so any choice chunk counts as arrival.
                chunks += 1
                if first is None:
                    first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {
        "ttft": first or 0.0,
        "latency": time.perf_counter() - t0,
        "tokens": tokens if tokens is not None else chunks,
    }


async def run_cell(url: str, models: list[str], prompts: list[str], max_tokens: int) -> dict:
    limits = httpx.Limits(max_connections=len(models) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        streams = await asyncio.gather(
            *(one_stream(client, m, p, max_tokens) for m, p in zip(models, prompts, strict=True))
        )
        wall = time.perf_counter() - t0
    return {"wall": wall, "streams": streams}


def make_prompts(n: int, tokens: int, seed: int) -> list[str]:
    """``n`` prompts of ``tokens`` tokens each for the byte-level tokenizer (1 letter = 1
    token)."""
    g = torch.Generator().manual_seed(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [
        "".join(letters[int(k)] for k in torch.randint(0, 26, (tokens,), generator=g))
        for _ in range(n)
    ]


def measure_server(
    name: str, url: str, pid: int, base: str, opts: argparse.Namespace
) -> dict[str, Any]:
    """Warm up, then ``opts.rounds`` interleaved rounds over (C, traffic); then the cold
    adapter probe."""
    cells = [(c, t) for c in opts.concurrency for t in ("lora", "base")]

    def models_for(c: int, traffic: str) -> list[str]:
        return [adapter_name(i) if traffic == "lora" else base for i in range(c)]

    top = max(opts.concurrency)
    warm = asyncio.run(
        run_cell(url, models_for(top, "lora"), make_prompts(top, opts.prompt_tokens, 1), 8)
    )
    del warm
    samples: dict[str, list[dict[str, Any]]] = {f"{c}/{t}": [] for c, t in cells}
    for rnd in range(opts.rounds):
        for c, traffic in cells:
            prompts = make_prompts(c, opts.prompt_tokens, seed=10 * rnd + c)
            cpu0 = tree_cpu_seconds(pid)
            cell = asyncio.run(run_cell(url, models_for(c, traffic), prompts, opts.max_tokens))
            cell["cpu"] = tree_cpu_seconds(pid) - cpu0
            samples[f"{c}/{traffic}"].append(cell)
            tokens = sum(s["tokens"] for s in cell["streams"])
            print(
                f"  {name} round {rnd} C={c:<3} {traffic:4}: {tokens / cell['wall']:7.1f} tok/s",
                flush=True,
            )
    out: dict[str, Any] = {}
    for key, cells_ in samples.items():
        streams = [s for cell in cells_ for s in cell["streams"]]
        tokens = [sum(s["tokens"] for s in cell["streams"]) for cell in cells_]
        rates = [t / cell["wall"] for t, cell in zip(tokens, cells_, strict=True)]
        out[key] = {
            "tok_s": statistics.median(rates),
            "tok_s_rounds": rates,
            "ttft_p50_ms": 1000 * percentile([s["ttft"] for s in streams], 50),
            "ttft_p99_ms": 1000 * percentile([s["ttft"] for s in streams], 99),
            "latency_p50_ms": 1000 * percentile([s["latency"] for s in streams], 50),
            "latency_p99_ms": 1000 * percentile([s["latency"] for s in streams], 99),
            "cpu_ms_per_token": 1000 * sum(c["cpu"] for c in cells_) / max(1, sum(tokens)),
            "tokens_per_stream": statistics.median(s["tokens"] for s in streams),
        }
    # Cold adapter: single stream, first token on a never-used adapter vs a warm one.
    prompt = make_prompts(1, opts.prompt_tokens, 99)

    def ttft(model: str) -> float:
        return asyncio.run(run_cell(url, [model], prompt, 2))["streams"][0]["ttft"]

    warm_ttft = statistics.median(ttft(adapter_name(0)) for _ in range(3))
    cold_ttft = ttft(adapter_name(opts.adapters))
    out["cold_adapter"] = {
        "warm_ttft_ms": 1000 * warm_ttft,
        "cold_ttft_ms": 1000 * cold_ttft,
        "added_ms": 1000 * (cold_ttft - warm_ttft),
    }
    return out


def start_ours(root: Path, model_dir: Path, adapters: Path, opts: argparse.Namespace) -> Any:
    from support.processes import Proc, lorafleet_argv, wait_for
    from support.services import free_port

    port = free_port()
    env = {
        **os.environ,
        "NIM_PEFT_SOURCE": str(adapters),
        "NIM_MAX_GPU_LORAS": str(max(opts.concurrency)),
        "NIM_MAX_CPU_LORAS": str(opts.adapters + 4),
        "NIM_MAX_LORA_RANK": str(opts.max_lora_rank or opts.rank),
        "LORAFLEET_ENGINE_MAX_BATCH": str(max(opts.concurrency)),
        "LORAFLEET_ENGINE_MAX_SEQ_LEN": "256",
        "LORAFLEET_ENGINE_DEVICE": opts.device,
        "LORAFLEET_ENGINE_DTYPE": "float32",
        "LORAFLEET_HOME": str(root / "home"),
        "LORAFLEET_LOG_LEVEL": "warning",
    }
    argv = lorafleet_argv(
        "engine", "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(port)
    )
    proc = Proc("lorafleet-engine", argv, env, root)
    proc.start()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        proc._check_alive()
        return httpx.get(f"{url}/v1/health/ready", timeout=5).status_code == 200

    try:
        wait_for(ready, 300, f"lorafleet engine on {url}")
    except Exception:
        print(proc.tail(4000))
        proc.stop()
        raise
    return proc, url


def start_theirs(root: Path, adapters: Path, opts: argparse.Namespace) -> Any:
    import support.ecosystem
    from support.ecosystem import start_vllm
    from support.services import free_port

    support.ecosystem.VLLM_START_TIMEOUT_S = opts.vllm_start_timeout

    python = Path(os.environ.get("LORAFLEET_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
    if not python.exists():
        raise SystemExit(f"{python} is missing: run scripts/install_vllm.sh (or --skip-vllm)")
    port = free_port()
    modules = [f"{adapter_name(i)}={adapters / adapter_name(i)}" for i in range(opts.adapters + 1)]
    proc = start_vllm(
        python,
        MODEL,
        cwd=root / "models",
        port=port,
        log_dir=root,
        env={"VLLM_CPU_KVCACHE_SPACE": "2"},
        max_lora_rank=opts.max_lora_rank or opts.rank,
        max_loras=max(opts.concurrency),
        extra_args=[
            "--max-num-seqs",
            str(max(opts.concurrency)),
            "--max-cpu-loras",
            str(opts.adapters + 4),
            "--lora-modules",
            *modules,
        ],
    )
    return proc, f"http://127.0.0.1:{port}"


def print_table(result: dict[str, Any], opts: argparse.Namespace) -> None:
    servers = result["servers"]
    print(
        f"\nserving: {result['model']['params'] / 1e6:.0f}M-param Llama fp32, {opts.adapters} "
        f"rank-{opts.rank} adapters on 7 modules (rank-{result['max_lora_rank']} slots), "
        f"{opts.prompt_tokens} tokens in, "
        f"{opts.max_tokens} out, {opts.rounds} rounds, {os.cpu_count()} cores, {opts.device}"
    )
    print(
        f"{'server':8} {'C':>3} {'traffic':7} {'tok/s':>8} {'TTFT p50':>9} {'p99':>8} "
        f"{'lat p50':>8} {'p99':>8} {'CPU ms/tok':>10} {'floor %':>8}"
    )
    for name, cells in servers.items():
        for key, s in cells.items():
            if key == "cold_adapter":
                continue
            c, traffic = key.split("/")
            floor = s["tok_s"] / result["floor_tok_s"][c] * 100 if traffic == "base" else None
            print(
                f"{name:8} {c:>3} {traffic:7} {s['tok_s']:8.1f} {s['ttft_p50_ms']:9.0f} "
                f"{s['ttft_p99_ms']:8.0f} {s['latency_p50_ms']:8.0f} {s['latency_p99_ms']:8.0f} "
                f"{s['cpu_ms_per_token']:10.2f} {'' if floor is None else f'{floor:7.1f}%':>8}"
            )
    print(
        f"floor: {result['weight_bytes'] / 1e6:.0f} MB of weights per decode step / "
        f"{result['bandwidth_gb_s']:.1f} GB/s (torch copy) = "
        + ", ".join(f"C={c}: {v:.0f} tok/s" for c, v in result["floor_tok_s"].items())
    )
    for key, value in result["ratios"].items():
        print(f"{key:28} {value:.2f}")
    for name, cells in servers.items():
        cold = cells["cold_adapter"]
        print(
            f"{name}: cold adapter first token {cold['cold_ttft_ms']:.0f} ms vs warm "
            f"{cold['warm_ttft_ms']:.0f} ms: +{cold['added_ms']:.0f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="ours: cpu, cuda, cuda:N")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--adapters", type=int, default=32, help="at least max(C)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument(
        "--max-lora-rank",
        type=int,
        default=None,
        help="both servers' slot rank (NIM_MAX_LORA_RANK, vLLM's --max-lora-rank); default "
        "--rank. NIM's default is 64: rank-16 adapters then sit in 4x wider slots",
    )
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--skip-vllm", action="store_true", help="measure lorafleet only")
    parser.add_argument(
        "--vllm-start-timeout", type=float, default=600, help="seconds (35 s on an idle machine)"
    )
    parser.add_argument("--out", default=str(RESULTS))
    opts = parser.parse_args()
    try:
        check_device(opts.device)
    except ValueError as exc:
        parser.error(str(exc))
    if opts.adapters < max(opts.concurrency):
        parser.error("--adapters must be at least the largest --concurrency")
    if opts.device != "cpu" and not opts.skip_vllm:
        parser.error("vLLM here is the CPU build: with --device cuda pass --skip-vllm")

    with tempfile.TemporaryDirectory(prefix="lorafleet-serving-") as tmp:
        root = Path(tmp)
        model_dir, adapters, weight_bytes = prepare(root, opts.adapters, opts.rank)
        bandwidth = measure_bandwidth(opts.device)
        floor = {str(c): c * bandwidth / weight_bytes for c in opts.concurrency}
        servers: dict[str, Any] = {}
        starters = [("ours", lambda: start_ours(root, model_dir, adapters, opts))]
        if not opts.skip_vllm:
            starters.append(("vllm", lambda: start_theirs(root, adapters, opts)))
        failures: dict[str, str] = {}
        for name, start in starters:
            t0 = time.perf_counter()
            try:
                proc, url = start()
            except (AssertionError, RuntimeError, OSError) as exc:
                # Keep what was measured: a server that does not come up is reported as such.
                failures[name] = f"did not start: {str(exc).splitlines()[-1][:300]}"
                print(f"{name} {failures[name]}", flush=True)
                continue
            print(f"{name} ready in {time.perf_counter() - t0:.0f} s", flush=True)
            try:
                servers[name] = measure_server(name, url, proc.popen.pid, MODEL, opts)
            finally:
                proc.stop()
    ratios: dict[str, float] = {}
    for c in opts.concurrency:
        ours = servers.get("ours")
        if ours is not None and "vllm" in servers:
            for traffic in ("lora", "base"):
                ratios[f"ours/vLLM {traffic} C={c}"] = (
                    ours[f"{c}/{traffic}"]["tok_s"] / servers["vllm"][f"{c}/{traffic}"]["tok_s"]
                )
        for name, cells in servers.items():
            ratios[f"{name} LoRA/base C={c}"] = (
                cells[f"{c}/lora"]["tok_s"] / cells[f"{c}/base"]["tok_s"]
            )
    params = weight_bytes // 4
    result = {
        "benchmark": "serving",
        "model": {**SHAPE, "params": params, "dtype": "float32"},
        "adapters": opts.adapters,
        "rank": opts.rank,
        "max_lora_rank": opts.max_lora_rank or opts.rank,
        "prompt_tokens": opts.prompt_tokens,
        "max_tokens": opts.max_tokens,
        "rounds": opts.rounds,
        "device": opts.device,
        "weight_bytes": weight_bytes,
        "bandwidth_gb_s": bandwidth / 1e9,
        "floor_tok_s": floor,
        "servers": servers,
        "ratios": ratios,
        "failures": failures,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average": os.getloadavg(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print_table(result, opts)
    for name, why in failures.items():
        print(f"{name}: {why}")
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
