"""Adapters for tests: random LoRA adapters for the tiny base model (``support.tiny``), and
writers for every adapter format (thin wrappers over the product writers in
``store.formats``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from store.formats import SUPPORTED_MODULES, BaseModelSpec, CanonicalAdapter
from store.formats import write_hf_peft as _write_hf_peft
from store.formats import write_nemo as _write_nemo
from store.formats import write_trtllm as _write_trtllm
from support.tiny import tiny_spec


def random_adapter(
    spec: BaseModelSpec | None = None,
    rank: int = 4,
    modules: tuple[str, ...] | list[str] = SUPPORTED_MODULES,
    alpha: float = 8.0,
    seed: int = 0,
    *,
    shared_a: bool = False,
    layers: int | None = None,
) -> CanonicalAdapter:
    """A canonical adapter with non-zero random A and B for every layer x module.

    ``shared_a=True`` gives q/k/v (and gate/up) one A per layer, as NeMo's fused LoRA has,
    so the adapter round-trips through the fused NeMo layout.
    """
    spec = spec or tiny_spec()
    gen = torch.Generator().manual_seed(seed)
    shapes = spec.module_shapes()
    n_layers = spec.num_layers if layers is None else layers
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for layer in range(n_layers):
        shared: dict[str, torch.Tensor] = {}
        for module in modules:
            in_f, out_f = shapes[module]
            group = "qkv" if module in ("q_proj", "k_proj", "v_proj") else module
            group = "mlp" if module in ("gate_proj", "up_proj") else group
            if shared_a and group in shared:
                a = shared[group].clone()
            else:
                a = torch.randn(rank, in_f, generator=gen) * 0.1
                shared[group] = a
            b = torch.randn(out_f, rank, generator=gen) * 0.1
            weights[(layer, module)] = (a, b)
    return CanonicalAdapter(
        source_format="hf_peft",
        rank=rank,
        alpha=float(alpha),
        target_modules=sorted(modules),
        num_layers=n_layers,
        weights=weights,
    )


def write_hf_peft(adapter: CanonicalAdapter, directory: Path, *, safetensors: bool = True) -> Path:
    """Write ``adapter`` as a HF PEFT directory; returns ``directory``."""
    _write_hf_peft(adapter, Path(directory), safetensors=safetensors)
    return Path(directory)


def write_nemo(
    adapter: CanonicalAdapter, directory: Path, spec: BaseModelSpec | None = None, **kwargs: Any
) -> Path:
    """Write ``adapter`` as a NeMo directory (one ``.nemo``); ``spec`` defaults to the tiny one."""
    _write_nemo(adapter, Path(directory), spec or tiny_spec(), **kwargs)
    return Path(directory)


def write_trtllm(
    adapter: CanonicalAdapter, directory: Path, *, ext: str = "npy", **kwargs: Any
) -> Path:
    """Write ``adapter`` as a TensorRT-LLM directory (``.npy`` or raw ``.bin``)."""
    _write_trtllm(adapter, Path(directory), ext=ext, **kwargs)
    return Path(directory)


def strong_adapter(spec: BaseModelSpec, *, rank: int = 4, seed: int = 0) -> CanonicalAdapter:
    """A random adapter big enough to change the tiny model's greedy output."""
    adapter = random_adapter(spec, rank=rank, alpha=4.0 * rank, seed=seed)
    for key, (a, b) in adapter.weights.items():
        adapter.weights[key] = (a * 10.0, b * 10.0)
    return adapter


def write_adapter_dir(
    root: Path, name: str, spec: BaseModelSpec, *, rank: int = 4, seed: int = 0
) -> Path:
    """Write a ``strong_adapter`` for ``spec`` as HF PEFT to ``root/name`` (NIM's local
    layout)."""
    return write_hf_peft(strong_adapter(spec, rank=rank, seed=seed), root / name)
