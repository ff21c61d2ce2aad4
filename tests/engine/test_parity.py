"""Parity with ``transformers`` + ``peft``: the same weights give the same logits and the same
greedy tokens, for base rows and for rows that each use a different adapter in one batch, and
for an adapter read from its HF PEFT, NeMo or TensorRT-LLM files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_model
from engine.lora import LoraBatch, LoraWeights
from engine.model import ModelArgs, Transformer
from store.formats import BaseModelSpec, CanonicalAdapter, load_adapter, write_nemo, write_trtllm

ATOL = 1e-4
MODEL_VARIANTS = ["tiny_model_dir", "tiny_gqa_model_dir"]


def spec_of(args: ModelArgs) -> BaseModelSpec:
    return BaseModelSpec(
        args.dim,
        args.intermediate_size,
        args.n_layers,
        args.n_heads,
        args.n_kv_heads,
        args.head_dim,
        args.vocab_size,
    )


def hf_model(model_dir: Path, adapters: list[Path]) -> torch.nn.Module:
    """transformers' Llama with ``adapters`` loaded into peft as ``a0``, ``a1``, ..."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    if not adapters:
        return base
    model = PeftModel.from_pretrained(base, adapters[0], adapter_name="a0")
    for i, path in enumerate(adapters[1:], start=1):
        model.load_adapter(path, adapter_name=f"a{i}")
    return model.eval()


def our_model(model_dir: Path, adapters: list[CanonicalAdapter]) -> Transformer:
    model, args = load_model(model_dir)
    model.setup_caches(max_batch=8, max_seq_len=64)
    weights = LoraWeights(
        args.module_shapes(), args.n_layers, n_slots=max(len(adapters), 1), max_rank=8
    )
    for slot, adapter in enumerate(adapters):
        weights.load_slot(slot, adapter)
    model.attach_lora(weights)
    return model


@pytest.fixture(params=MODEL_VARIANTS)
def variant(
    request: pytest.FixtureRequest, peft_factory: Callable[..., Path]
) -> tuple[Path, list[Path]]:
    """(model dir, three peft adapter dirs of ranks 2, 4, 8) for each model variant."""
    model_dir: Path = request.getfixturevalue(request.param)
    if request.param == "tiny_model_dir":
        return model_dir, request.getfixturevalue("peft_adapters")
    return model_dir, [
        peft_factory(model_dir, r, a, s) for r, a, s in ((2, 4.0, 20), (8, 32.0, 21))
    ]


@torch.inference_mode()
def test_mixed_adapter_batch_matches_peft_adapter_names(variant: tuple[Path, list[Path]]) -> None:
    model_dir, dirs = variant
    hf = hf_model(model_dir, dirs)
    args = load_model(model_dir)[1]
    adapters = [load_adapter(d, spec_of(args)) for d in dirs]
    ours = our_model(model_dir, adapters)
    names = [f"a{i}" for i in range(len(dirs))]
    slots = list(range(len(dirs))) + [-1, 0]  # every adapter, a base row, a repeated adapter
    hf_names = names + ["__base__", "a0"]
    ids = torch.randint(
        0, args.vocab_size, (len(slots), 9), generator=torch.Generator().manual_seed(0)
    )
    want = hf(input_ids=ids, adapter_names=hf_names).logits
    pos = torch.arange(9).expand_as(ids)
    for kernel in ("bgmv", "sgmv"):
        got = ours(ids, pos, torch.arange(len(slots)), LoraBatch(torch.tensor(slots), kernel))
        torch.testing.assert_close(got, want, atol=ATOL, rtol=ATOL)
    with hf.disable_adapter():
        base = hf(input_ids=ids[:1]).logits
    assert (want[0] - base[0]).abs().max() > 1e-2  # the adapter really changes the logits


@torch.inference_mode()
def test_base_model_logits_match_transformers(variant: tuple[Path, list[Path]]) -> None:
    model_dir, _ = variant
    hf = hf_model(model_dir, [])
    ours = our_model(model_dir, [])
    ids = torch.randint(0, 272, (2, 16), generator=torch.Generator().manual_seed(1))
    got = ours(ids, torch.arange(16).expand_as(ids), torch.tensor([1, 0]))
    torch.testing.assert_close(got, hf(input_ids=ids).logits, atol=ATOL, rtol=ATOL)


def greedy(
    model: Transformer, prompts: list[list[int]], slots: list[int], steps: int, eos: set[int]
) -> list[list[int]]:
    """Prefill each prompt in its own cache row, then decode all rows together in one batch
    (rows sit at different positions), stopping a row at EOS."""
    outs: list[list[int]] = [[] for _ in prompts]
    for row, (p, s) in enumerate(zip(prompts, slots, strict=True)):
        logits = model(
            torch.tensor([p]),
            torch.arange(len(p))[None],
            torch.tensor([row]),
            LoraBatch(torch.tensor([s])),
        )
        outs[row].append(int(logits[0, -1].argmax()))
    for _ in range(steps - 1):
        live = [r for r, o in enumerate(outs) if o[-1] not in eos]
        if not live:
            break
        ids = torch.tensor([[outs[r][-1]] for r in live])
        pos = torch.tensor([[len(prompts[r]) + len(outs[r]) - 1] for r in live])
        logits = model(
            ids, pos, torch.tensor(live), LoraBatch(torch.tensor([slots[r] for r in live]))
        )
        for i, r in enumerate(live):
            outs[r].append(int(logits[i, -1].argmax()))
    return outs


@torch.inference_mode()
def test_greedy_generation_matches_transformers_generate(variant: tuple[Path, list[Path]]) -> None:
    model_dir, dirs = variant
    args = load_model(model_dir)[1]
    ours = our_model(model_dir, [load_adapter(d, spec_of(args)) for d in dirs])
    hf = hf_model(model_dir, dirs)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (5, 11, 3)]
    slots = [0, -1, len(dirs) - 1]
    steps = 10
    got = greedy(ours, prompts, slots, steps, set(args.eos_token_ids))
    for prompt, slot, tokens in zip(prompts, slots, got, strict=True):
        if slot < 0:
            with hf.disable_adapter():
                out = hf.generate(
                    input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=steps
                )
        else:
            hf.set_adapter(f"a{slot}")
            out = hf.generate(
                input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=steps
            )
        assert tokens == out[0, len(prompt) :].tolist()
    assert sum(len(t) for t in got) > len(prompts)  # several steps really ran


@torch.inference_mode()
def test_nemo_and_trtllm_files_of_the_same_weights_give_the_same_logits(
    tiny_model_dir: Path, peft_adapters: list[Path], tmp_path: Path
) -> None:
    args = load_model(tiny_model_dir)[1]
    spec = spec_of(args)
    peft = load_adapter(peft_adapters[1], spec)
    write_nemo(peft, tmp_path / "nemo", spec)
    write_trtllm(peft, tmp_path / "trtllm")
    nemo, trt = load_adapter(tmp_path / "nemo", spec), load_adapter(tmp_path / "trtllm", spec)
    assert (nemo.source_format, trt.source_format) == ("nemo", "trtllm")
    ours = our_model(tiny_model_dir, [peft, nemo, trt])
    ids = torch.randint(0, 272, (1, 8), generator=torch.Generator().manual_seed(3)).expand(4, 8)
    logits = ours(
        ids, torch.arange(8).expand(4, 8), torch.arange(4), LoraBatch(torch.tensor([0, 1, 2, -1]))
    )
    torch.testing.assert_close(logits[1], logits[0], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(logits[2], logits[0], atol=ATOL, rtol=ATOL)
    assert (logits[0] - logits[3]).abs().max() > 1e-2
    want = hf_model(tiny_model_dir, [peft_adapters[1]])(input_ids=ids[:1]).logits[0]
    torch.testing.assert_close(logits[0], want, atol=ATOL, rtol=ATOL)
