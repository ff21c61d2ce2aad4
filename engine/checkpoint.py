"""A HF-layout Llama directory to a ``Transformer``: ``config.json`` is parsed and validated
once (``read_model_config``: the registry's ``BaseModelSpec`` and the ``ModelArgs`` built
from it), and HF weight names are converted in exactly one place (``convert_hf_state_dict``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from engine.model import ModelArgs, Transformer, rope_inv_freq
from store.formats import BaseModelSpec


def read_model_config(path: Path) -> tuple[BaseModelSpec, ModelArgs]:
    """The base model in ``path`` described once: its ``BaseModelSpec`` (``AdapterInvalid``
    when ``config.json`` is unusable) and ``ModelArgs.from_spec`` of it.
    ``generation_config.json``'s eos list wins (Llama 3 lists ``<|eot_id|>`` there)."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    spec = BaseModelSpec.from_hf_config(config)
    args = ModelArgs.from_spec(spec, config)
    gen_cfg = path / "generation_config.json"
    if gen_cfg.exists():
        eos = json.loads(gen_cfg.read_text()).get("eos_token_id")
        if eos is not None:
            args.eos_token_ids = [eos] if isinstance(eos, int) else list(eos)
    return spec, args


def convert_hf_state_dict(sd: dict[str, Tensor], args: ModelArgs) -> dict[str, Tensor]:
    """Rename HF ``LlamaForCausalLM`` weights to this module's names (the only place that
    knows HF's layout). ``lm_head`` is dropped when embeddings are tied."""
    out: dict[str, Tensor] = {}
    for name, t in sd.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        new = (
            name.replace("model.embed_tokens.", "tok_embeddings.")
            .replace("model.norm.", "norm.")
            .replace("lm_head.", "output.")
            .replace("model.layers.", "layers.")
            .replace(".self_attn.", ".attention.")
            .replace(".mlp.", ".feed_forward.")
            .replace(".input_layernorm.", ".attention_norm.")
            .replace(".post_attention_layernorm.", ".ffn_norm.")
        )
        out[new] = t
    if args.tie_word_embeddings:
        out.pop("output.weight", None)
    return out


def read_hf_weights(path: Path) -> dict[str, Tensor]:
    """All tensors of a HF directory: ``model.safetensors`` or the shards listed in
    ``model.safetensors.index.json``."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, Tensor] = {}
        for shard in shards:
            sd.update(load_file(str(path / shard)))
        return sd
    return load_file(str(path / "model.safetensors"))


def load_model(
    path: Path,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    *,
    args: ModelArgs | None = None,
) -> tuple[Transformer, ModelArgs]:
    """Load a HF-layout Llama directory into an eval-mode ``Transformer`` (with ``args`` from
    ``read_model_config`` when the caller already has them).

    ``dtype`` defaults to fp32 on CPU and bf16 on CUDA. Raises ``KeyError``/``RuntimeError``
    if a weight is missing or unexpected (strict load). Call ``setup_caches`` before forward.
    """
    path = Path(path)
    if args is None:
        _, args = read_model_config(path)
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    with torch.device("meta"):
        model = Transformer(args)
    sd = convert_hf_state_dict(read_hf_weights(path), args)
    sd = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    result = model.load_state_dict(sd, strict=False, assign=True)
    if result.unexpected_keys:
        raise KeyError(f"unexpected weights in {path}: {result.unexpected_keys}")
    if args.tie_word_embeddings:
        model.output.weight = model.tok_embeddings.weight
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise KeyError(f"weights missing from {path}: {missing}")
    model.inv_freq = rope_inv_freq(args).to(device)
    return model.eval(), args
