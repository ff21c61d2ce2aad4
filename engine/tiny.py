"""A tiny random Llama in HF layout, for tests, demos and CI (no hub download needed).

``init_tiny(dir)`` writes ``config.json``, ``model.safetensors`` (or shards + index),
``generation_config.json``, a byte-level BPE ``tokenizer.json`` and a ``tokenizer_config.json``
with a Llama-3-like chat template. The directory loads with ``engine.checkpoint.load_model`` and
with ``transformers.LlamaForCausalLM`` / ``PreTrainedTokenizerFast``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

SPECIAL_TOKENS: list[str] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
BOS, EOT = "<|begin_of_text|>", "<|eot_id|>"

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def build_byte_tokenizer() -> Tokenizer:
    """A byte-level BPE tokenizer: ids 0..255 are the bytes, then ``SPECIAL_TOKENS`` (256..).
    Every string round-trips; BOS is prepended by the post-processor like Llama 3."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character table (what ByteLevel uses).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def tiny_config(
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate_size: int = 128,
    vocab_size: int = 272,
    head_dim: int | None = None,
    rope_scaling: dict[str, Any] | None = None,
    rope_theta: float = 10000.0,
    tie_word_embeddings: bool = False,
    max_position_embeddings: int = 512,
) -> dict[str, Any]:
    """The HF ``config.json`` dict of a tiny ``LlamaForCausalLM`` (ids as in the tokenizer)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must hold the {256 + len(SPECIAL_TOKENS)} tokenizer tokens")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads or heads,
        "head_dim": head_dim or hidden_size // heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": 256,
        "eos_token_id": [257, 260],
        "torch_dtype": "float32",
    }


def random_hf_weights(
    cfg: dict[str, Any], *, seed: int = 0, std: float = 0.02
) -> dict[str, torch.Tensor]:
    """Random fp32 weights under HF ``LlamaForCausalLM`` names for config ``cfg``."""
    g = torch.Generator().manual_seed(seed)
    d, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    q_out, kv_out = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd

    def randn(*shape: int, scale: float = std) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "model.embed_tokens.weight": randn(v, d, scale=1.0),
        "model.norm.weight": 1 + randn(d, scale=0.1),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = randn(q_out, d)
        sd[p + "self_attn.k_proj.weight"] = randn(kv_out, d)
        sd[p + "self_attn.v_proj.weight"] = randn(kv_out, d)
        sd[p + "self_attn.o_proj.weight"] = randn(d, q_out)
        sd[p + "mlp.gate_proj.weight"] = randn(inter, d)
        sd[p + "mlp.up_proj.weight"] = randn(inter, d)
        sd[p + "mlp.down_proj.weight"] = randn(d, inter)
        sd[p + "input_layernorm.weight"] = 1 + randn(d, scale=0.1)
        sd[p + "post_attention_layernorm.weight"] = 1 + randn(d, scale=0.1)
    if not cfg.get("tie_word_embeddings"):
        sd["lm_head.weight"] = randn(v, d)
    return sd


def init_tiny(
    directory: Path | str,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate_size: int = 128,
    vocab_size: int = 272,
    head_dim: int | None = None,
    rope_scaling: dict[str, Any] | None = None,
    tie_word_embeddings: bool = False,
    max_position_embeddings: int = 512,
    seed: int = 0,
    std: float = 0.02,
    shards: int = 1,
) -> Path:
    """Write a tiny random Llama (weights, config, tokenizer, chat template) to ``directory``.

    Deterministic for a given ``seed``. ``shards > 1`` writes
    ``model-0000k-of-0000n.safetensors`` plus ``model.safetensors.index.json``. Returns the path.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(
        hidden_size=hidden_size,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        head_dim=head_dim,
        rope_scaling=rope_scaling,
        tie_word_embeddings=tie_word_embeddings,
        max_position_embeddings=max_position_embeddings,
    )
    sd = random_hf_weights(cfg, seed=seed, std=std)
    _write_weights(out, sd, shards)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    gen = {"bos_token_id": 256, "eos_token_id": [257, 260], "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    build_byte_tokenizer().save(str(out / "tokenizer.json"))
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOT,
        "pad_token": "<|end_of_text|>",
        "model_max_length": max_position_embeddings,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return out


def _write_weights(out: Path, sd: dict[str, torch.Tensor], shards: int) -> None:
    meta = {"format": "pt"}
    if shards <= 1:
        save_file(sd, str(out / "model.safetensors"), metadata=meta)
        return
    names = list(sd)
    weight_map: dict[str, str] = {}
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: sd[n].contiguous() for n in names[k::shards]}
        save_file(part, str(out / file), metadata=meta)
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
