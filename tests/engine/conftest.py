"""Shared engine fixtures: tiny random Llama directories and PEFT adapters made by ``peft``.

* ``tiny_model_dir``: ``engine.tiny.init_tiny`` defaults (hidden 64, 2 layers, 4 heads).
* ``tiny_gqa_model_dir``: GQA (4 query / 2 kv heads), Llama-3 ``rope_scaling``, tied
  embeddings, weights in two shards.
* ``peft_adapters``: three HF PEFT directories (ranks 2, 4, 8; all seven modules; random,
  non-zero A and B) saved by ``peft`` itself for ``tiny_model_dir``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.tiny import init_tiny

ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama in HF layout (session-scoped; do not modify)."""
    return init_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_gqa_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GQA + llama3 rope scaling + tied embeddings + sharded weights."""
    return init_tiny(
        tmp_path_factory.mktemp("tiny_gqa") / "model",
        kv_heads=2,
        rope_scaling=LLAMA3_ROPE,
        tie_word_embeddings=True,
        shards=2,
        seed=1,
    )


def make_peft_adapter(model_dir: Path, out_dir: Path, rank: int, alpha: float, seed: int) -> Path:
    """Save a random (non-zero B) LoRA for ``model_dir`` with ``peft.save_pretrained``."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    base = LlamaForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=ALL_MODULES, init_lora_weights=False
    )
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def peft_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``peft_factory(model_dir, rank, alpha, seed) -> adapter dir`` (fresh directory)."""

    def make(model_dir: Path, rank: int, alpha: float, seed: int) -> Path:
        out = tmp_path_factory.mktemp(f"peft_r{rank}_s{seed}")
        return make_peft_adapter(model_dir, out, rank, alpha, seed)

    return make


@pytest.fixture(scope="session")
def peft_adapters(tiny_model_dir: Path, peft_factory: Callable[..., Path]) -> list[Path]:
    """Three PEFT adapter directories for ``tiny_model_dir``: ranks 2, 4, 8."""
    return [
        peft_factory(tiny_model_dir, rank=r, alpha=a, seed=s)
        for r, a, s in ((2, 4.0, 10), (4, 16.0, 11), (8, 8.0, 12))
    ]
