"""A Llama-family decoder (Llama 2/3, Mistral-style GQA) with batched multi-LoRA, gpt-fast style.

One ``nn.Module`` per concept. Every request in a batch owns one row of the preallocated KV
cache (``cache_rows``) and brings its own absolute ``positions``, so a decode batch may mix
requests at different lengths. Each linear layer of the seven LoRA targets is a
``LoraLinear`` that adds its batched LoRA term when a ``LoraBatch`` is given; the adapter
math lives in ``engine/lora.py``.

Loading a HF checkpoint (its ``config.json`` parsed once, its weight names converted in one
place) is ``engine/checkpoint.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.lora import LoraBatch, LoraWeights, lora_apply
from store.formats import BaseModelSpec
from store.formats.spec import llama_module_shapes


@dataclass
class ModelArgs:
    """The shape of a Llama-family model, read from a HF ``config.json``."""

    vocab_size: int = 32000
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    head_dim: int = 128
    intermediate_size: int = 11008
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)

    @classmethod
    def from_spec(cls, spec: BaseModelSpec, cfg: dict[str, Any]) -> ModelArgs:
        """The one conversion from a base model's description: dimensions from ``spec`` (the
        registry's validated ``BaseModelSpec``, the shapes adapters are checked against), the
        rest (norm, RoPE, biases, tied embeddings, token ids) from the same ``config.json``."""
        eos = cfg.get("eos_token_id")
        eos_ids = [] if eos is None else ([int(eos)] if isinstance(eos, int) else list(eos))
        return cls(
            vocab_size=spec.vocab_size,
            dim=spec.hidden_size,
            n_layers=spec.num_layers,
            n_heads=spec.num_heads,
            n_kv_heads=spec.num_kv_heads,
            head_dim=spec.head_dim,
            intermediate_size=spec.intermediate_size,
            norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rope_scaling=cfg.get("rope_scaling"),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelArgs:
        """``from_spec`` of the config's ``BaseModelSpec`` (``AdapterInvalid`` when a
        dimension is missing or inconsistent). ``head_dim`` is taken from the config when
        present, else ``hidden_size // heads``; ``num_key_value_heads`` defaults to
        ``num_attention_heads`` (no GQA)."""
        return cls.from_spec(BaseModelSpec.from_hf_config(cfg), cfg)

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """``module -> (in_features, out_features)`` of the seven LoRA targets (the same
        geometry ``BaseModelSpec.module_shapes`` gives the registry)."""
        return llama_module_shapes(
            hidden_size=self.dim,
            intermediate_size=self.intermediate_size,
            num_heads=self.n_heads,
            num_kv_heads=self.n_kv_heads,
            head_dim=self.head_dim,
        )


def rope_inv_freq(args: ModelArgs) -> Tensor:
    """Inverse RoPE frequencies ``[head_dim // 2]`` (fp32), with HF's ``rope_scaling`` applied.

    Supports the default, ``linear`` and ``llama3`` rope types (the same math as
    ``transformers.modeling_rope_utils``).
    """
    d = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    scaling = args.rope_scaling or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, blended, scaled)
    if rope_type != "default":
        raise ValueError(f"unsupported rope_type {rope_type!r}")
    return inv_freq


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x: [B, H, S, D]; cos/sin: [B, 1, S, D] (HF's half-rotation layout, not interleaved)
    return x * cos + rotate_half(x) * sin


# Batch size oneDNN is told to expect when it chooses a packed layout; any batch runs on
# it (bench: 1 to 512 rows within noise of the best hint on this machine).
PACK_BATCH_HINT = 8


def pack_linear_weight(weight: Tensor) -> Tensor | None:
    """oneDNN's prepacked copy of ``weight [out, in]`` for ``linear_packed``, or ``None``
    where it cannot be packed (not on the CPU, a torch without oneDNN, a dtype this CPU has
    no oneDNN kernel for, e.g. bfloat16 without AVX-512)."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_BATCH_HINT)
    except (RuntimeError, AttributeError):
        return None


def linear_packed(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear`` on a weight packed by ``pack_linear_weight`` (same result to fp32
    rounding; any leading shape of ``x``)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class Linear(nn.Module):
    """``y = x W^T (+ b)`` whose weight can be packed for oneDNN's CPU GEMM
    (``Transformer.prepack``).

    MKL's GEMM behind ``F.linear`` is slow at the few rows a decode step has: on the serving
    bench's model (2 cores, fp32) an 8-row decode step takes ~46 ms through it and ~25 ms
    through the packed weights, the 32000-row lm_head ~3x faster. vLLM's CPU backend packs
    its weights for oneDNN in the same way. Parameter names are ``nn.Linear``'s.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.packed: Tensor | None = None  # oneDNN's copy of ``weight`` once prepacked

    def base(self, x: Tensor) -> Tensor:
        if self.packed is not None:
            return linear_packed(x, self.packed, self.bias)
        return F.linear(x, self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x)


class LoraLinear(Linear):
    """``y = x W^T (+ b) + scaling[slot] * (x A[slot]^T) B[slot]^T`` per row (vLLM style).

    The stacked per-slot buffers are views into a ``LoraWeights`` bound by
    ``Transformer.attach_lora``; without a ``LoraBatch`` this is a plain linear layer.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias)
        self.lora_A: Tensor | None = None  # [n_slots, max_rank, in]
        self.lora_B: Tensor | None = None  # [n_slots, out, max_rank]
        self.lora_scaling: Tensor | None = None  # [n_slots]

    def forward(self, x: Tensor, lora: LoraBatch | None = None) -> Tensor:  # type: ignore[override]
        y = self.base(x)  # [B, S, out]
        if lora is not None and self.lora_A is not None and lora.active:
            y = lora_apply(y, x, self.lora_A, self.lora_B, self.lora_scaling, lora)
        return y


class KVCache(nn.Module):
    """Preallocated keys/values, one row per concurrent request: ``[max_batch, H_kv, T, D]``."""

    def __init__(
        self,
        max_batch: int,
        max_seq_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        shape = (max_batch, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer(
            "k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False
        )
        self.register_buffer(
            "v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False
        )

    def update(self, step: Step, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k, v`` ``[B, H_kv, S, D]`` at ``(rows[b], positions[b, s])``; return each row's
        first ``step.length`` cached positions, ``[B, H_kv, length, D]`` each."""
        r = step.rows[:, None]  # [B, 1] broadcasts against positions [B, S]
        self.k_cache[r, :, step.positions] = k.transpose(1, 2)  # indexed view: [B, S, H_kv, D]
        self.v_cache[r, :, step.positions] = v.transpose(1, 2)
        # A contiguous run of rows is read as a view; scattered rows need a gathered copy.
        return self.k_cache[step.read_rows, :, : step.length], self.v_cache[
            step.read_rows, :, : step.length
        ]


@dataclass
class Step:
    """What every layer needs about the batch, computed once per forward."""

    positions: Tensor  # [B, S] absolute positions
    rows: Tensor  # [B] KV-cache row of each request
    read_rows: slice | Tensor  # rows as a slice when they are contiguous
    length: int  # cache positions anyone in the batch may attend to
    cos: Tensor  # [B, 1, S, D]
    sin: Tensor  # [B, 1, S, D]
    mask: Tensor  # [B, 1, S, length] bool, True = may attend


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        q_out, kv_out = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
        self.q_proj = LoraLinear(args.dim, q_out, args.attention_bias)
        self.k_proj = LoraLinear(args.dim, kv_out, args.attention_bias)
        self.v_proj = LoraLinear(args.dim, kv_out, args.attention_bias)
        self.o_proj = LoraLinear(q_out, args.dim, args.attention_bias)
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, step: Step, lora: LoraBatch | None) -> Tensor:
        B, S, _ = x.shape
        q = self.q_proj(x, lora).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x, lora).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x, lora).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        # q: [B, H, S, D]; k, v: [B, H_kv, S, D]
        q, k = apply_rope(q, step.cos, step.sin), apply_rope(k, step.cos, step.sin)
        assert self.kv_cache is not None, "call Transformer.setup_caches first"
        k, v = self.kv_cache.update(step, k, v)  # [B, H_kv, T, D]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=step.mask, enable_gqa=self.n_kv_heads != self.n_heads
        )  # [B, H, S, D]
        y = y.transpose(1, 2).reshape(B, S, self.n_heads * self.head_dim)
        return self.o_proj(y, lora)


class FeedForward(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.gate_proj = LoraLinear(args.dim, args.intermediate_size, args.mlp_bias)
        self.up_proj = LoraLinear(args.dim, args.intermediate_size, args.mlp_bias)
        self.down_proj = LoraLinear(args.intermediate_size, args.dim, args.mlp_bias)

    def forward(self, x: Tensor, lora: LoraBatch | None) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x, lora)) * self.up_proj(x, lora), lora)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 like HF, then cast back before the weight.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: Tensor, step: Step, lora: LoraBatch | None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), step, lora)
        return h + self.feed_forward(self.ffn_norm(h), lora)


LORA_TARGETS: dict[str, str] = {  # module name -> attribute path inside a TransformerBlock
    "q_proj": "attention.q_proj",
    "k_proj": "attention.k_proj",
    "v_proj": "attention.v_proj",
    "o_proj": "attention.o_proj",
    "gate_proj": "feed_forward.gate_proj",
    "up_proj": "feed_forward.up_proj",
    "down_proj": "feed_forward.down_proj",
}


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.register_buffer("inv_freq", rope_inv_freq(args), persistent=False)
        self.max_batch = self.max_seq_len = -1
        self.lora_weights: LoraWeights | None = None

    def setup_caches(self, max_batch: int, max_seq_len: int) -> None:
        """Allocate (or reallocate, zeroed) the KV cache for ``max_batch`` rows of
        ``max_seq_len`` positions each, in the model's dtype and device."""
        dtype, device = self.output.weight.dtype, self.output.weight.device
        for block in self.layers:
            block.attention.kv_cache = KVCache(
                max_batch, max_seq_len, self.args.n_kv_heads, self.args.head_dim, dtype, device
            )
        self.max_batch, self.max_seq_len = max_batch, max_seq_len

    @torch.no_grad()
    def prepack(self, *, release: bool = False) -> int:
        """Repack every linear layer's weight (the seven projections of each block and the
        lm_head) for oneDNN; returns how many were packed: all of them, or 0 where
        ``pack_linear_weight`` cannot pack (then nothing changes). Call after the weights are
        loaded: a weight changed later is not seen. ``release`` drops the unpacked copy
        (a zero-stride stub of the same shape, dtype and device takes its place), so the
        weights are not held twice; the model then only serves (its ``state_dict`` no longer
        holds them). An lm_head tied to the embeddings keeps its storage."""
        linears = [m for m in self.modules() if isinstance(m, Linear)]
        packed = [pack_linear_weight(m.weight) for m in linears]
        if any(p is None for p in packed):
            return 0
        for linear, p in zip(linears, packed, strict=True):
            linear.packed = p
            w = linear.weight
            if release and w is not self.tok_embeddings.weight:
                linear.weight = nn.Parameter(w.new_zeros(1).expand(w.shape), requires_grad=False)
        return len(linears)

    def attach_lora(self, weights: LoraWeights | None) -> None:
        """Bind every LoRA target layer to its stacked slot buffers in ``weights`` (``None``
        detaches). Slots loaded later through ``weights.load_slot`` are seen immediately."""
        self.lora_weights = weights
        for i, block in enumerate(self.layers):
            for module, attr in LORA_TARGETS.items():
                linear: LoraLinear = block.get_submodule(attr)
                if weights is None:
                    linear.lora_A = linear.lora_B = linear.lora_scaling = None
                else:
                    linear.lora_A, linear.lora_B = weights.A[(i, module)], weights.B[(i, module)]
                    linear.lora_scaling = weights.scaling

    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor,
        cache_rows: Tensor,
        lora: LoraBatch | None = None,
        logit_index: Tensor | None = None,
    ) -> Tensor:
        """Logits ``[B, S, V]`` for ``input_ids [B, S]`` at absolute ``positions [B, S]``.

        Row ``b`` writes its keys/values into KV-cache row ``cache_rows[b]`` at its own
        positions and each token attends to that row's positions ``<=`` its own, so rows may
        sit at different lengths. Padding: give pad tokens positions after the row's real
        tokens; what they write is overwritten before any real token can attend to it.
        ``logit_index [B]`` (optional) picks one position per row: logits ``[B, 1, V]``.
        Logits are in the model's dtype. A contiguous run of ``cache_rows`` (e.g. ``0..B-1``)
        reads the cache without a gathered copy.
        """
        assert self.max_seq_len > 0, "call setup_caches first"
        length = int(positions.max().item()) + 1  # cache positions anyone here can attend to
        if length > self.max_seq_len:
            raise ValueError(f"position {length - 1} exceeds the KV cache ({self.max_seq_len})")
        x = self.tok_embeddings(input_ids)  # [B, S, dim]
        freqs = positions[..., None].float() * self.inv_freq  # [B, S, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, S, D]
        key_pos = torch.arange(length, device=positions.device)
        row_list = cache_rows.tolist()
        first = row_list[0]
        contiguous = row_list == list(range(first, first + len(row_list)))
        step = Step(
            positions=positions,
            rows=cache_rows,
            read_rows=slice(first, first + len(row_list)) if contiguous else cache_rows,
            length=length,
            cos=emb.cos().to(x.dtype),
            sin=emb.sin().to(x.dtype),
            mask=(key_pos[None, None, :] <= positions[:, :, None])[:, None],  # [B, 1, S, T]
        )
        for block in self.layers:
            x = block(x, step, lora)
        if logit_index is not None:
            x = x[torch.arange(x.shape[0], device=x.device), logit_index][:, None]  # [B, 1, dim]
        return self.output(self.norm(x))  # [B, S, V]
