"""The tiny Llama every suite uses: the engine's model directories come from ``engine.tiny``
(``init_tiny``: hidden 64, 2 layers, a byte-level tokenizer); this module adds what tests
need around them.

* ``tiny_hf_config`` / ``tiny_spec``: the registry's tiny base model, config only (hidden
  64, 2 layers, GQA 4/2, vocab 256); ``overrides`` are ``config.json`` keys.
* ``model_spec``: the ``BaseModelSpec`` of a model directory (``init_tiny``'s, say).
* ``engine_settings``: small, CPU-only engine settings serving a model directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.settings import EngineSettings
from store.formats import BaseModelSpec

TINY_MODEL = "tiny-llama"  # the name the engine serves a tiny model under in tests


def tiny_hf_config(**overrides: Any) -> dict[str, Any]:
    """A HF ``config.json`` dict for a tiny LlamaForCausalLM (hidden 64, 2 layers, GQA 4/2)."""
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 256,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    config.update(overrides)
    return config


def tiny_spec(**overrides: Any) -> BaseModelSpec:
    """``BaseModelSpec`` of ``tiny_hf_config(**overrides)``."""
    return BaseModelSpec.from_hf_config(tiny_hf_config(**overrides))


def model_spec(model_dir: Path) -> BaseModelSpec:
    """The ``BaseModelSpec`` of a HF model directory (as the engine reads it)."""
    from engine.checkpoint import read_model_config

    return read_model_config(model_dir)[0]


def engine_settings(model_dir: Path, **overrides: Any) -> EngineSettings:
    """Small, CPU-only settings for tests; ``overrides`` use the Python field names."""
    values: dict[str, Any] = {
        "model_dir": model_dir,
        "served_model_name": TINY_MODEL,
        "device": "cpu",
        "max_batch": 8,
        "max_seq_len": 128,
        "max_gpu_loras": 4,
        "max_cpu_loras": 8,
        "max_lora_rank": 16,
    }
    values.update(overrides)
    return EngineSettings(**values)
