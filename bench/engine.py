"""Engine throughput with and without multi-LoRA, against transformers + peft.

On one set of random weights (a Llama-shaped model; ~134M parameters by default):

  (a) base model, no LoRA
  (b) a batch of B requests over B distinct rank-r adapters on all 7 modules
  (c) the same batch through transformers + peft (``adapter_names`` mixed-batch inference)
  (d) the same batch, every row on one shared adapter

decode and prefill tokens/s (medians over interleaved rounds after a warm-up round;
ratios paired per round), the LoRA kernels
compared on (b) and (d), and the cold load of one adapter from disk (canonical safetensors)
into a slot. The "ideal" (b)/(a) is the ratio left if the adapters cost exactly the extra
bytes (decode: memory-bound) or FLOPs (prefill: compute-bound) they add:

  decode ideal  = W / (W + n_adapters * r * sum_{layers,modules}(in + out))    [bytes ~ params]
  prefill ideal = W / (W + r * sum_{layers,modules}(in + out))                   [FLOPs per token]

where W is the weight count of the linear layers + lm_head (what every token multiplies).

    .venv/bin/python bench/engine.py            # full CPU run (~4 min on 2 cores)
    .venv/bin/python bench/engine.py --quick    # tiny config, seconds (CI)
    .venv/bin/python bench/engine.py --device cuda --dtype bfloat16 --llama3-8b
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.allocator import keep_freed_blocks  # noqa: E402
from engine.checkpoint import convert_hf_state_dict  # noqa: E402
from engine.lora import LoraBatch, LoraWeights  # noqa: E402
from engine.model import ModelArgs, Transformer, rope_inv_freq  # noqa: E402
from engine.settings import check_device  # noqa: E402
from engine.tiny import tiny_config  # noqa: E402
from store.formats import (  # noqa: E402
    SUPPORTED_MODULES,
    BaseModelSpec,
    CanonicalAdapter,
    load_adapter,
    write_canonical,
)

SHAPES: dict[str, dict[str, Any]] = {
    "quick": dict(
        hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128, vocab_size=512
    ),
    "100m": dict(hidden_size=768, layers=12, heads=12, intermediate_size=2048, vocab_size=32000),
    "llama3-8b": dict(
        hidden_size=4096,
        layers=32,
        heads=32,
        kv_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], reps: int, device: str) -> tuple[float, float]:
    """(median, min) wall time of ``fn`` over ``reps`` runs after one warm-up run. The min is
    reported too because a shared CPU makes the median noisy."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def build_models(
    cfg: dict[str, Any], device: str, dtype: torch.dtype
) -> tuple[Any, Transformer, ModelArgs]:
    """transformers' LlamaForCausalLM with random weights, and ours sharing the same tensors."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        hf = LlamaForCausalLM(LlamaConfig(**cfg)).to(dtype).eval()
    args = ModelArgs.from_hf_config(cfg)
    with torch.device("meta"):
        ours = Transformer(args)
    sd = convert_hf_state_dict(hf.state_dict(), args)
    ours.load_state_dict(sd, strict=False, assign=True)
    if args.tie_word_embeddings:
        ours.output.weight = ours.tok_embeddings.weight
    ours.inv_freq = rope_inv_freq(args).to(device)  # buffers built on meta: rebuild
    return hf, ours.eval(), args


def random_adapter(args: ModelArgs, rank: int, seed: int) -> CanonicalAdapter:
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for layer in range(args.n_layers):
        for module, (n_in, n_out) in args.module_shapes().items():
            weights[(layer, module)] = (
                torch.randn(rank, n_in, generator=g) * 0.02,
                torch.randn(n_out, rank, generator=g) * 0.02,
            )
    return CanonicalAdapter(
        "hf_peft", rank, 2.0 * rank, list(SUPPORTED_MODULES), args.n_layers, weights
    )


def attach_peft(hf: Any, adapters: list[CanonicalAdapter]) -> Any:
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    first = adapters[0]
    config = LoraConfig(
        r=first.rank, lora_alpha=first.alpha, target_modules=list(SUPPORTED_MODULES)
    )
    model = get_peft_model(hf, config, adapter_name="a0")
    for i, adapter in enumerate(adapters):
        if i:
            model.add_adapter(f"a{i}", config)
        dtype = next(hf.parameters()).dtype
        sd = {k: v.to(dtype) for k, v in adapter.state_dict().items()}
        set_peft_model_state_dict(model, sd, adapter_name=f"a{i}")
    return model.eval()


def ideal_ratios(args: ModelArgs, rank: int, n_adapters: int) -> dict[str, float]:
    per_adapter = rank * args.n_layers * sum(i + o for i, o in args.module_shapes().values())
    linear = args.n_layers * sum(i * o for i, o in args.module_shapes().values())
    weights = linear + args.dim * args.vocab_size  # + lm_head
    return {
        "weights_per_token": weights,
        "adapter_params": per_adapter,
        "decode": weights / (weights + n_adapters * per_adapter),
        "prefill": weights / (weights + per_adapter),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny model, seconds")
    p.add_argument("--llama3-8b", action="store_true", help="Llama-3-8B shapes (GPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--context", type=int, default=32, help="tokens already cached before decode")
    p.add_argument("--decode-steps", type=int, default=4)
    p.add_argument("--prefill-len", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument(
        "--untuned",
        action="store_true",
        help="run ours on the CPU as the engine did before 2026-12-03: linear weights as "
        "loaded (MKL) and glibc's default malloc thresholds, instead of packing the weights "
        "for oneDNN (LORAFLEET_ENGINE_PREPACK) and keeping freed blocks (engine.allocator)",
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "engine.json"))
    opts = p.parse_args()
    shape = "quick" if opts.quick else "llama3-8b" if opts.llama3_8b else "100m"
    dtype = (
        getattr(torch, opts.dtype)
        if opts.dtype
        else (torch.bfloat16 if opts.device.startswith("cuda") else torch.float32)
    )
    try:
        check_device(opts.device)
    except ValueError as exc:
        p.error(str(exc))
    dev, B, r = opts.device, opts.batch, opts.rank
    cfg = tiny_config(**SHAPES[shape])
    torch.set_grad_enabled(False)

    t0 = time.perf_counter()
    hf, ours, args = build_models(cfg, dev, dtype)
    adapters = [random_adapter(args, r, seed) for seed in range(B)]
    weights = LoraWeights(
        args.module_shapes(), args.n_layers, n_slots=B, max_rank=r, device=dev, dtype=dtype
    )
    for slot, adapter in enumerate(adapters):
        weights.load_slot(slot, adapter)
    ours.attach_lora(weights)
    peft_model = attach_peft(hf, adapters)
    n_params = sum(t.numel() for t in ours.state_dict().values())
    # As the engine starts (engine/runtime.py); release=False: ours shares hf's tensors.
    # The malloc thresholds are the process's, so peft runs with them too.
    tuned = not opts.untuned and dev == "cpu"
    malloc = keep_freed_blocks() if tuned else "default"
    packed = ours.prepack(release=False) if tuned else 0
    print(
        f"# {shape}: {n_params / 1e6:.1f}M params, {dev} {dtype}, batch {B}, rank {r}, "
        f"threads {torch.get_num_threads()}, {packed} linear layers packed for oneDNN, "
        f"malloc {malloc}, "
        f"setup {time.perf_counter() - t0:.1f}s",
        flush=True,
    )

    ctx, steps, plen = opts.context, opts.decode_steps, opts.prefill_len
    ours.setup_caches(B, ctx + steps)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, args.vocab_size, (B, ctx), generator=g).to(dev)
    pre_ids = torch.randint(0, args.vocab_size, (B, plen), generator=g).to(dev)
    rows = torch.arange(B, device=dev)
    configs: dict[str, LoraBatch | None] = {
        "a_base": None,
        "b_distinct": LoraBatch(torch.arange(B, device=dev)),
        "d_shared": LoraBatch(torch.zeros(B, dtype=torch.long, device=dev)),
        # "auto" picks bgmv for (b) and sgmv for (d); time the other kernel on each too.
        "b_distinct_sgmv": LoraBatch(torch.arange(B, device=dev), "sgmv"),
        "d_shared_bgmv": LoraBatch(torch.zeros(B, dtype=torch.long, device=dev), "bgmv"),
    }

    def ours_decode(lora: LoraBatch | None) -> float:
        tok = prompt[:, -1:]
        t0 = time.perf_counter()
        for i in range(steps):  # rewrites the same cache positions every round
            pos = torch.full((B, 1), ctx + i, device=dev)
            tok = ours(tok, pos, rows, lora).argmax(-1)  # [B, 1]
        sync(dev)
        return time.perf_counter() - t0

    def ours_prefill(lora: LoraBatch | None) -> float:
        pos = torch.arange(plen, device=dev).expand(B, plen)
        last = torch.full((B,), plen - 1, device=dev)
        t0 = time.perf_counter()
        ours(pre_ids, pos, rows, lora, logit_index=last)
        sync(dev)
        return time.perf_counter() - t0

    names = [f"a{i}" for i in range(B)]
    prefix = peft_model(input_ids=prompt, adapter_names=names, use_cache=True).past_key_values

    def hf_decode() -> float:
        cache = copy.deepcopy(prefix)  # outside the clock
        tok = prompt[:, -1:]
        t0 = time.perf_counter()
        for _ in range(steps):
            out = peft_model(
                input_ids=tok, past_key_values=cache, adapter_names=names, use_cache=True
            )
            cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sync(dev)
        return time.perf_counter() - t0

    def hf_prefill() -> float:
        t0 = time.perf_counter()
        peft_model(input_ids=pre_ids, adapter_names=names, logits_to_keep=1)
        sync(dev)
        return time.perf_counter() - t0

    ours(prompt, torch.arange(ctx, device=dev).expand(B, ctx), rows)  # fill the KV cache
    runs: dict[str, Callable[[], float]] = {}
    for name, lora in configs.items():
        runs[f"{name}/decode"] = lambda lora=lora: ours_decode(lora)
        runs[f"{name}/prefill"] = lambda lora=lora: ours_prefill(lora)
    runs["c_peft/decode"], runs["c_peft/prefill"] = hf_decode, hf_prefill
    # Rounds interleave every configuration, so load from other processes on a shared
    # machine hits them alike; round 0 is the warm-up. Ratios are taken per round (paired).
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rnd in range(opts.reps + 1):
        for key, fn in runs.items():
            t = fn()
            if rnd:
                times[key].append(t)
        print(
            f"round {rnd}: " + " ".join(f"{k}={v[-1]:.3f}s" for k, v in times.items() if v),
            flush=True,
        )
    tokens = {"decode": B * steps, "prefill": B * plen}
    results: dict[str, dict[str, float]] = {}
    for key, ts in times.items():
        name, phase = key.split("/")
        row = results.setdefault(name, {})
        row[f"{phase}_tok_s"] = tokens[phase] / statistics.median(ts)
        row[f"{phase}_tok_s_best"] = tokens[phase] / min(ts)

    def paired(num: str, den: str, phase: str) -> float:
        # throughput ratio num/den = time(den)/time(num), median over rounds
        pairs = zip(times[f"{den}/{phase}"], times[f"{num}/{phase}"], strict=True)
        return statistics.median(d / n for d, n in pairs)

    # Cold load: canonical files on disk -> parsed + validated -> copied into a GPU slot.
    spec = BaseModelSpec.from_hf_config(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        write_canonical(adapters[0], Path(tmp))
        parse = timed(lambda: load_adapter(Path(tmp), spec), opts.reps, dev)[0]
        loaded = load_adapter(Path(tmp), spec)
        copy_in = timed(lambda: weights.load_slot(1, loaded), opts.reps, dev)[0]
    load = {
        "parse_validate_s": parse,
        "slot_copy_s": copy_in,
        "total_s": parse + copy_in,
        "adapter_bytes_fp32": sum(a.nbytes + b.nbytes for a, b in adapters[0].weights.values()),
    }

    ideal = ideal_ratios(args, r, B)
    ratios = {
        "decode_b_over_a": paired("b_distinct", "a_base", "decode"),
        "prefill_b_over_a": paired("b_distinct", "a_base", "prefill"),
        "decode_b_over_c": paired("b_distinct", "c_peft", "decode"),
        "prefill_b_over_c": paired("b_distinct", "c_peft", "prefill"),
        "decode_d_over_a": paired("d_shared", "a_base", "decode"),
        "prefill_d_over_a": paired("d_shared", "a_base", "prefill"),
        "decode_ideal_b_over_a": ideal["decode"],
        "prefill_ideal_b_over_a": ideal["prefill"],
    }
    print(
        "\n| config | decode tok/s (median / best) | prefill tok/s (median / best) |"
        "\n| --- | ---: | ---: |"
    )
    for name, row in results.items():
        print(
            f"| {name} | {row['decode_tok_s']:.1f} / {row['decode_tok_s_best']:.1f} "
            f"| {row['prefill_tok_s']:.1f} / {row['prefill_tok_s_best']:.1f} |"
        )
    print("\n| ratio | decode | prefill |\n| --- | ---: | ---: |")
    print(
        f"| (b)/(a) measured | {ratios['decode_b_over_a']:.3f} | {ratios['prefill_b_over_a']:.3f} |"
    )
    print(f"| (b)/(a) ideal (bytes / FLOPs) | {ideal['decode']:.3f} | {ideal['prefill']:.3f} |")
    print(
        f"| (b)/(c) ours vs peft | {ratios['decode_b_over_c']:.2f} | {ratios['prefill_b_over_c']:.2f} |"
    )
    print(
        f"| (d)/(a) one shared adapter | {ratios['decode_d_over_a']:.3f} "
        f"| {ratios['prefill_d_over_a']:.3f} |"
    )
    print(
        f"\ncold adapter load ({load['adapter_bytes_fp32'] / 2**20:.1f} MiB fp32): parse+validate "
        f"{parse * 1e3:.1f} ms, slot copy {copy_in * 1e3:.1f} ms"
    )

    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "shape": shape,
                "params": n_params,
                "device": dev,
                "dtype": str(dtype),
                "batch": B,
                "rank": r,
                "context": ctx,
                "decode_steps": steps,
                "prefill_len": plen,
                "reps": opts.reps,
                "threads": torch.get_num_threads(),
                "prepacked_linear_layers": packed,
                "malloc": malloc,
                "results": results,
                "ratios": ratios,
                "ideal": ideal,
                "cold_load": load,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
