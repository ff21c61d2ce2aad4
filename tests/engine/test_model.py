"""engine.model: the decoder's KV cache, per-row positions, padding and loading contracts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_model
from engine.model import ModelArgs, Transformer, rope_inv_freq
from engine.tiny import init_tiny, tiny_config


@pytest.fixture(scope="module")
def model(tiny_gqa_model_dir: Path) -> Transformer:
    m, _ = load_model(tiny_gqa_model_dir)
    m.setup_caches(max_batch=4, max_seq_len=64)
    return m


def full(model: Transformer, ids: torch.Tensor, row: int = 0) -> torch.Tensor:
    """Logits of one sequence ``ids [S]`` run as a single prefill in cache row ``row``."""
    pos = torch.arange(ids.shape[0])[None]
    return model(ids[None], pos, torch.tensor([row]))[0]


@torch.inference_mode()
def test_decode_step_by_step_matches_one_prefill(model: Transformer) -> None:
    ids = torch.randint(0, 272, (12,), generator=torch.Generator().manual_seed(0))
    expected = full(model, ids, row=1)
    prefill = model(ids[None, :5], torch.arange(5)[None], torch.tensor([2]))[0]
    steps = [
        model(ids[None, p : p + 1], torch.tensor([[p]]), torch.tensor([2]))[0, 0]
        for p in range(5, 12)
    ]
    got = torch.cat([prefill, torch.stack(steps)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_decode_batch_mixes_rows_at_different_positions(model: Transformer) -> None:
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 272, (n,), generator=g) for n in (3, 9, 6)]
    rows = [3, 0, 1]
    expected = [full(model, s, row=2)[-1] for s in seqs]
    for s, r in zip(seqs, rows, strict=True):  # prefill all but the last token, one per row
        model(s[None, :-1], torch.arange(len(s) - 1)[None], torch.tensor([r]))
    ids = torch.stack([s[-1] for s in seqs])[:, None]  # [3, 1]
    pos = torch.tensor([[len(s) - 1] for s in seqs])  # [3, 1]
    got = model(ids, pos, torch.tensor(rows))[:, 0]
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_right_padded_prefill_gives_real_tokens_their_unpadded_logits(model: Transformer) -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(0, 272, (7,), generator=g), torch.randint(0, 272, (4,), generator=g)
    ea, eb = full(model, a), full(model, b)
    ids = torch.stack([a, torch.cat([b, torch.zeros(3, dtype=torch.long)])])
    pos = torch.arange(7).expand(2, 7)  # pads continue the positions of row 1
    out = model(ids, pos, torch.tensor([0, 1]))
    torch.testing.assert_close(out[0], ea, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, :4], eb, atol=1e-5, rtol=1e-5)
    # the pad writes are overwritten by decode before anyone attends to them
    nxt = torch.tensor([[5]])
    step = model(nxt, torch.tensor([[4]]), torch.tensor([1]))[0, 0]
    torch.testing.assert_close(step, full(model, torch.cat([b, nxt[0]]))[-1], atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_logit_index_selects_one_position_per_row(model: Transformer) -> None:
    ids = torch.randint(0, 272, (2, 6), generator=torch.Generator().manual_seed(3))
    pos = torch.arange(6).expand(2, 6)
    all_logits = model(ids, pos, torch.tensor([0, 1]))
    picked = model(ids, pos, torch.tensor([0, 1]), logit_index=torch.tensor([5, 2]))
    assert picked.shape == (2, 1, 272)
    torch.testing.assert_close(picked[:, 0], all_logits[[0, 1], [5, 2]])


def test_position_past_the_cache_is_refused(model: Transformer) -> None:
    with pytest.raises(ValueError, match="exceeds the KV cache"):
        model(torch.tensor([[1]]), torch.tensor([[64]]), torch.tensor([0]))


def test_model_args_read_gqa_head_dim_and_eos_from_hf_config() -> None:
    cfg = tiny_config(hidden_size=64, heads=4, kv_heads=1, head_dim=32)
    args = ModelArgs.from_hf_config(cfg)
    assert (args.n_heads, args.n_kv_heads, args.head_dim) == (4, 1, 32)
    assert args.eos_token_ids == [257, 260]
    del cfg["num_key_value_heads"], cfg["head_dim"]
    args = ModelArgs.from_hf_config(cfg)
    assert (args.n_kv_heads, args.head_dim) == (4, 16)


def test_llama3_rope_scaling_slows_only_low_frequencies() -> None:
    base = ModelArgs(head_dim=64, rope_theta=500000.0)
    scaled = ModelArgs(
        head_dim=64,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    f0, f1 = rope_inv_freq(base), rope_inv_freq(scaled)
    assert torch.equal(f1[:4], f0[:4])  # high frequencies untouched
    torch.testing.assert_close(f1[-1], f0[-1] / 8.0)  # lowest frequency divided by factor


def test_sharded_and_single_file_weights_load_identically(tmp_path: Path) -> None:
    one, _ = load_model(init_tiny(tmp_path / "one", seed=5))
    two, _ = load_model(init_tiny(tmp_path / "two", seed=5, shards=3))
    assert (tmp_path / "two" / "model.safetensors.index.json").exists()
    for (n1, p1), (n2, p2) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)


def test_missing_weight_is_an_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    sd = load_file(broken / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, broken / "model.safetensors")
    with pytest.raises(KeyError, match="up_proj"):
        load_model(broken)


def test_tied_embeddings_share_one_tensor(tiny_gqa_model_dir: Path) -> None:
    m, args = load_model(tiny_gqa_model_dir)
    assert args.tie_word_embeddings
    assert m.output.weight.data_ptr() == m.tok_embeddings.weight.data_ptr()
    assert json.loads((tiny_gqa_model_dir / "config.json").read_text())["tie_word_embeddings"]


def test_default_dtype_is_fp32_on_cpu_and_can_be_overridden(tiny_model_dir: Path) -> None:
    m, _ = load_model(tiny_model_dir)
    assert m.output.weight.dtype == torch.float32
    m16, _ = load_model(tiny_model_dir, dtype=torch.bfloat16)
    m16.setup_caches(1, 8)
    assert m16.layers[0].attention.kv_cache.k_cache.dtype == torch.bfloat16
    out = m16(torch.tensor([[1, 2]]), torch.tensor([[0, 1]]), torch.tensor([0]))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
