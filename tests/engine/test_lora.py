"""engine.lora: batched LoRA kernels against the per-row reference, and slot loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_model
from engine.lora import (
    LoraBatch,
    LoraWeights,
    lora_apply,
    lora_delta,
    lora_delta_grouped,
    lora_delta_reference,
)
from engine.model import LORA_TARGETS, Transformer
from store.errors import AdapterInvalid
from store.formats import BaseModelSpec, CanonicalAdapter

N_SLOTS, R, IN, OUT = 5, 8, 24, 40


def stacked(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(N_SLOTS, R, IN, generator=g)  # [n, r, in]
    B = torch.randn(N_SLOTS, OUT, R, generator=g)  # [n, out, r]
    scaling = torch.rand(N_SLOTS, generator=g) + 0.5  # [n]
    return A, B, scaling


SLOT_MIXES = {
    "all_different_with_none": [0, 3, -1, 1, 4],
    "all_none": [-1, -1, -1],
    "duplicates": [2, 2, -1, 2, 0, 0],
    "one_shared": [1, 1, 1, 1],
    "single_row": [4],
}


@pytest.mark.parametrize("seq_len", [1, 7])
@pytest.mark.parametrize("mix", list(SLOT_MIXES))
def test_fast_kernels_match_the_reference(mix: str, seq_len: int) -> None:
    A, B, scaling = stacked()
    slots = torch.tensor(SLOT_MIXES[mix])
    x = torch.randn(len(slots), seq_len, IN, generator=torch.Generator().manual_seed(1))
    ref = lora_delta_reference(x, A, B, scaling, slots)
    torch.testing.assert_close(lora_delta(x, A, B, scaling, slots), ref, atol=1e-5, rtol=1e-5)
    groups = LoraBatch(slots).groups
    torch.testing.assert_close(
        lora_delta_grouped(x, A, B, scaling, groups), ref, atol=1e-5, rtol=1e-5
    )
    assert ref.shape == (len(slots), seq_len, OUT)
    for row, s in enumerate(SLOT_MIXES[mix]):
        assert (ref[row] == 0).all() == (s < 0)  # rows without an adapter get exactly zero


@pytest.mark.parametrize("seq_len", [1, 7])
def test_the_fast_kernels_use_only_the_ranks_the_batch_needs(seq_len: int) -> None:
    # Slots of rank R holding adapters of rank <= 3 (ranks past that zero, as load_slot
    # leaves them): the kernels cut to 3 ranks give the full reference's answer, and a cut
    # below an adapter's rank changes it, so the cut really is applied.
    A, B, scaling = stacked()
    A[:, 3:], B[:, :, 3:] = 0, 0
    slots = torch.tensor(SLOT_MIXES["duplicates"])
    x = torch.randn(len(slots), seq_len, IN, generator=torch.Generator().manual_seed(2))
    ref = lora_delta_reference(x, A, B, scaling, slots)
    groups = LoraBatch(slots).groups
    for rank, same in ((3, True), (R, True), (2, False)):
        for got in (
            lora_delta(x, A, B, scaling, slots, rank),
            lora_delta_grouped(x, A, B, scaling, groups, rank),
        ):
            assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5) == same, rank


RUN_MIXES = {
    "whole_in_order": [0, 1, 2, 3, 4],
    "permuted": [2, 4, 0, 3, 1],
    "with_base_rows": [-1, 3, 1, -1, 2],
    "offset_run": [4, -1, 3],
    "single_row": [2],
}


@pytest.mark.parametrize("seq_len", [1, 7])
@pytest.mark.parametrize("mix", list(RUN_MIXES))
def test_a_run_of_distinct_slots_is_read_in_place_and_matches_the_reference(
    mix: str, seq_len: int
) -> None:
    A, B, scaling = stacked()
    A[:, 3:], B[:, :, 3:] = 0, 0  # adapters of rank 3 in rank-R slots, as load_slot leaves them
    slots = torch.tensor(RUN_MIXES[mix])
    batch = LoraBatch(slots, kernel="bgmv", rank=3)
    run = batch.slot_run
    assert run is not None
    assert [RUN_MIXES[mix][row] for row in run.rows.tolist()] == list(range(run.lo, run.lo + run.n))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(len(slots), seq_len, IN, generator=g)
    base_out = torch.randn(len(slots), seq_len, OUT, generator=g)
    got = lora_apply(base_out.clone(), x, A, B, scaling, batch)
    ref = lora_delta_reference(x, A, B, scaling, slots)
    torch.testing.assert_close(got - base_out, ref, atol=1e-5, rtol=1e-5)
    for row, s in enumerate(RUN_MIXES[mix]):
        if s < 0:  # a base-model row is exactly the base model's output
            assert torch.equal(got[row], base_out[row])
    cut = lora_apply(base_out.clone(), x, A, B, scaling, LoraBatch(slots, kernel="bgmv", rank=2))
    assert not torch.allclose(cut - base_out, ref, atol=1e-5, rtol=1e-5)  # the rank cut applies


def test_only_distinct_consecutive_slots_make_a_run() -> None:
    assert LoraBatch(torch.tensor([0, 2])).slot_run is None  # a gap
    assert LoraBatch(torch.tensor([1, 1, 2])).slot_run is None  # a shared slot
    assert LoraBatch(torch.tensor([-1, -1])).slot_run is None
    assert LoraBatch(torch.tensor([0, 1, 2])).slot_run.whole
    assert not LoraBatch(torch.tensor([1, 0, 2])).slot_run.whole


def test_reference_is_the_textbook_formula() -> None:
    A, B, scaling = stacked()
    x = torch.randn(1, 3, IN)
    expected = scaling[3] * x[0] @ A[3].T @ B[3].T
    torch.testing.assert_close(
        lora_delta_reference(x, A, B, scaling, torch.tensor([3]))[0], expected
    )


def test_auto_kernel_groups_only_when_rows_share_adapters() -> None:
    assert LoraBatch(torch.tensor([0, 1, 2, 3])).resolved_kernel == "bgmv"
    assert LoraBatch(torch.tensor([0, 0, 0, 1])).resolved_kernel == "sgmv"
    assert not LoraBatch(torch.tensor([-1, -1])).active
    assert LoraBatch(torch.tensor([-1, 2])).active


# --- slots --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tiny_model_dir: Path) -> Transformer:
    m, _ = load_model(tiny_model_dir)
    m.setup_caches(max_batch=4, max_seq_len=32)
    return m


def spec_of(model: Transformer) -> BaseModelSpec:
    a = model.args
    return BaseModelSpec(
        a.dim, a.intermediate_size, a.n_layers, a.n_heads, a.n_kv_heads, a.head_dim, a.vocab_size
    )


def make_adapter(
    spec: BaseModelSpec,
    rank: int,
    seed: int,
    alpha: float = 16.0,
    modules: tuple[str, ...] = tuple(LORA_TARGETS),
) -> CanonicalAdapter:
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for layer in range(spec.num_layers):
        for m in modules:
            n_in, n_out = spec.module_shapes()[m]
            weights[(layer, m)] = (
                torch.randn(rank, n_in, generator=g) * 0.1,
                torch.randn(n_out, rank, generator=g) * 0.1,
            )
    return CanonicalAdapter("hf_peft", rank, alpha, sorted(modules), spec.num_layers, weights)


def merged_model(model_dir: Path, adapter: CanonicalAdapter) -> Transformer:
    """The base model with ``W += scaling * B @ A`` folded in: an independent oracle."""
    m, _ = load_model(model_dir)
    with torch.no_grad():
        for (layer, module), (a, b) in adapter.weights.items():
            m.layers[layer].get_submodule(LORA_TARGETS[module]).weight += adapter.scaling * b @ a
    m.setup_caches(max_batch=4, max_seq_len=32)
    return m


def run(model: Transformer, ids: torch.Tensor, slots: list[int] | None) -> torch.Tensor:
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    rows = torch.arange(ids.shape[0])
    lora = None if slots is None else LoraBatch(torch.tensor(slots))
    with torch.inference_mode():
        return model(ids, pos, rows, lora)


def test_each_row_gets_its_own_adapter_in_one_batch(
    base: Transformer, tiny_model_dir: Path
) -> None:
    spec = spec_of(base)
    ad1 = make_adapter(spec, rank=2, seed=1, modules=("q_proj", "v_proj", "down_proj"))
    ad2 = make_adapter(spec, rank=8, seed=2)
    weights = LoraWeights(base.args.module_shapes(), base.args.n_layers, n_slots=3, max_rank=8)
    weights.load_slot(2, ad1)  # rank 2 zero-padded into rank-8 buffers
    weights.load_slot(0, ad2)
    base.attach_lora(weights)
    ids = torch.randint(0, 272, (3, 6), generator=torch.Generator().manual_seed(0))
    want = [
        run(merged_model(tiny_model_dir, ad1), ids[:1], None)[0],
        run(merged_model(tiny_model_dir, ad2), ids[1:2], None)[0],
        run(base, ids[2:], None)[0],
    ]
    for kernel in ("bgmv", "sgmv", "reference"):
        for rank in (None, 8):  # the scheduler passes the batch's largest adapter rank
            got = run_kernel(base, ids, [2, 0, -1], kernel, rank)
            for row in range(3):
                torch.testing.assert_close(got[row], want[row], atol=1e-4, rtol=1e-4)
    # Only the rank-2 adapter in the batch: its slot cut to 2 ranks, the same answer.
    got = run_kernel(base, ids[:1], [2], "bgmv", 2)
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(want[0], want[2], atol=1e-3)  # the adapters really change logits
    base.attach_lora(None)


def run_kernel(
    model: Transformer, ids: torch.Tensor, slots: list[int], kernel: str, rank: int | None = None
) -> torch.Tensor:
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    lora = LoraBatch(torch.tensor(slots), kernel, rank)
    with torch.inference_mode():
        return model(ids, pos, torch.arange(ids.shape[0]), lora)


def test_cleared_slot_gives_the_base_model(base: Transformer) -> None:
    weights = LoraWeights(base.args.module_shapes(), base.args.n_layers, n_slots=2, max_rank=4)
    weights.load_slot(1, make_adapter(spec_of(base), rank=4, seed=3))
    base.attach_lora(weights)
    ids = torch.randint(0, 272, (1, 5), generator=torch.Generator().manual_seed(4))
    plain = run(base, ids, None)
    assert not torch.allclose(run(base, ids, [1]), plain, atol=1e-3)
    weights.clear_slot(1)
    assert weights.slot_rank[1] == 0
    torch.testing.assert_close(run(base, ids, [1]), plain, atol=0, rtol=0)
    base.attach_lora(None)


def test_a_reused_slot_holds_only_its_new_adapter(base: Transformer) -> None:
    """clear_slot zeroes only the ranks a slot used: after a rank-8 adapter on all modules,
    a rank-2 adapter on two modules leaves every other rank and module exactly zero."""
    weights = LoraWeights(base.args.module_shapes(), base.args.n_layers, n_slots=1, max_rank=8)
    weights.load_slot(0, make_adapter(spec_of(base), rank=8, seed=11))
    small = make_adapter(spec_of(base), rank=2, seed=12, modules=("k_proj", "up_proj"))
    weights.load_slot(0, small)
    assert weights.slot_rank[0] == 2
    for key, a in weights.A.items():
        b = weights.B[key]
        if key in small.weights:
            want_a, want_b = small.weights[key]
            assert torch.equal(a[0, :2], want_a) and torch.equal(b[0, :, :2], want_b)
            assert not a[0, 2:].any() and not b[0, :, 2:].any()
        else:
            assert not a[0].any() and not b[0].any(), key
    weights.clear_slot(0)
    assert not any(a[0].any() or weights.B[k][0].any() for k, a in weights.A.items())


def test_rank_above_max_rank_is_refused_and_slot_kept(base: Transformer) -> None:
    weights = LoraWeights(base.args.module_shapes(), base.args.n_layers, n_slots=2, max_rank=4)
    good = make_adapter(spec_of(base), rank=4, seed=5)
    weights.load_slot(0, good)
    before = {k: v[0].clone() for k, v in weights.A.items()}
    with pytest.raises(AdapterInvalid) as err:
        weights.load_slot(0, make_adapter(spec_of(base), rank=8, seed=6))
    assert err.value.code == "rank_too_large"
    assert all(torch.equal(weights.A[k][0], v) for k, v in before.items())
    assert weights.scaling[0] == good.scaling and weights.slot_rank[0] == 4


def test_one_bad_shape_anywhere_leaves_the_slot_untouched(base: Transformer) -> None:
    weights = LoraWeights(base.args.module_shapes(), base.args.n_layers, n_slots=2, max_rank=4)
    good = make_adapter(spec_of(base), rank=4, seed=7)
    weights.load_slot(1, good)
    snapshot = [t[1].clone() for t in list(weights.A.values()) + list(weights.B.values())]
    bad = make_adapter(spec_of(base), rank=4, seed=8)
    last = max(bad.weights)  # corrupt the very last pair so an eager copier would be half-done
    a, b = bad.weights[last]
    bad.weights[last] = (a, b[:-1])
    with pytest.raises(AdapterInvalid) as err:
        weights.load_slot(1, bad)
    assert err.value.code == "shape_mismatch"
    after = [t[1] for t in list(weights.A.values()) + list(weights.B.values())]
    assert all(torch.equal(x, y) for x, y in zip(snapshot, after, strict=True))


def test_layer_out_of_range_is_a_shape_mismatch(base: Transformer) -> None:
    weights = LoraWeights(base.args.module_shapes(), base.args.n_layers, n_slots=1, max_rank=4)
    bad = make_adapter(spec_of(base), rank=2, seed=9)
    bad.weights[(5, "q_proj")] = bad.weights[(0, "q_proj")]
    with pytest.raises(AdapterInvalid) as err:
        weights.load_slot(0, bad)
    assert err.value.code == "shape_mismatch"


def test_slot_memory_is_rank_times_all_module_dims(base: Transformer) -> None:
    a = base.args
    weights = LoraWeights(a.module_shapes(), a.n_layers, n_slots=2, max_rank=4)
    per_layer = sum(i + o for i, o in weights.shapes.values())
    assert weights.nbytes_per_slot() == a.n_layers * per_layer * 4 * 4  # rank 4, fp32


def test_the_scheduler_cuts_to_the_batch_rank_and_keeps_each_adapters_output(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # A rank-2 and a rank-8 adapter in rank-16 slots, decoded in one batch: the scheduler
    # passes rank 8 (the largest) to the kernels. Each row's chosen-token logprobs equal
    # the merged-weights model's for the same tokens; a cut below 8 would change them.
    import threading

    from support.factories import write_hf_peft
    from support.tiny import engine_settings

    from engine.runtime import build_runtime
    from engine.sampling import SamplingParams
    from engine.scheduler import GenerationRequest, TokenDelta

    model, _ = load_model(tiny_model_dir)
    spec = spec_of(model)
    adapters = {"small": make_adapter(spec, rank=2, seed=11), "big": make_adapter(spec, 8, 12)}
    root = tmp_path / "adapters"
    for name, adapter in adapters.items():
        write_hf_peft(adapter, root / name)
    runtime = build_runtime(engine_settings(tiny_model_dir, peft_source=str(root)))
    runtime.start()
    try:
        prompt = [5, 17, 42, 7]
        done = {name: threading.Event() for name in adapters}
        tokens: dict[str, list] = {name: [] for name in adapters}

        def sink(name: str):  # type: ignore[no-untyped-def]
            def take(delta: TokenDelta) -> None:
                tokens[name].extend(delta.tokens)
                if delta.finish_reason:
                    done[name].set()

            return take

        params = SamplingParams(max_tokens=6, temperature=0.0, logprobs=0, ignore_eos=True)
        for name in adapters:
            runtime.scheduler.submit(GenerationRequest(prompt, params, sink(name), name))
        assert all(event.wait(60) for event in done.values())
    finally:
        runtime.stop()
    for name, adapter in adapters.items():
        got = tokens[name]
        ids = torch.tensor([prompt + [t.token_id for t in got]])
        logits = run(merged_model(tiny_model_dir, adapter), ids, None)[0]
        want = torch.log_softmax(logits[len(prompt) - 1 : -1].float(), -1)
        for step, token in enumerate(got):
            assert token.logprob == pytest.approx(float(want[step, token.token_id]), abs=1e-3)
