"""NeMo format: a directory with exactly one ``*.nemo`` tar holding ``model_config.yaml`` and
``model_weights.ckpt`` (a torch state dict, read weights-only, never extracted to disk).

NeMo's default ("nemo") variant fuses LoRA on QKV and on gate+up:

* ``lora_kqv_adapter``: one A ``[r, hidden]`` and one B over Megatron's fused QKV output,
  which is interleaved per query group: for each group, its ``heads/groups`` query heads,
  then one key head, then one value head (each ``head_dim`` rows). Split exactly into
  q/k/v with the shared A (the same layout NeMo's own canonical converter uses).
* ``lora_hto4h_adapter``: B ``[2 * intermediate, r]``, gate rows first, then up.
* ``lora_dense_attention_adapter`` (o_proj) and ``lora_4htoh_adapter`` (down_proj) map 1:1.

The "canonical" variant (``lora_unfused_kqv_adapter.{q,k,v}_adapter``,
``lora_unfused_hto4h_adapter.{gate,up}_adapter``) is read too. NeMo scales by alpha/dim.
"""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import Tensor

from store.errors import AdapterInvalid
from store.formats.guards import MAX_CONFIG_BYTES, read_tar_members, torch_load_weights_only
from store.formats.parsers import parse_config_yaml
from store.formats.spec import BaseModelSpec, CanonicalAdapter, ValidationLimits
from store.formats.validate import check_float_tensor, check_rank

CONFIG_MEMBER = "model_config.yaml"
WEIGHTS_MEMBER = "model_weights.ckpt"
_RANK0_WEIGHTS = "mp_rank_00/model_weights.ckpt"

_KEY = re.compile(
    r"^(?:.*\.)?layers\.(?P<layer>\d+)\.(?:self_attention|mlp)\.adapter_layer\."
    r"(?P<adapter>lora_kqv_adapter|lora_dense_attention_adapter|lora_hto4h_adapter"
    r"|lora_4htoh_adapter|lora_unfused_kqv_adapter\.[qkv]_adapter"
    r"|lora_unfused_hto4h_adapter\.(?:gate|up)_adapter)\.linear_(?P<io>in|out)\.weight$"
)
_SIMPLE = {
    "lora_dense_attention_adapter": "o_proj",
    "lora_4htoh_adapter": "down_proj",
    "lora_unfused_kqv_adapter.q_adapter": "q_proj",
    "lora_unfused_kqv_adapter.k_adapter": "k_proj",
    "lora_unfused_kqv_adapter.v_adapter": "v_proj",
    "lora_unfused_hto4h_adapter.gate_adapter": "gate_proj",
    "lora_unfused_hto4h_adapter.up_adapter": "up_proj",
}
_PREFIX = "model.decoder.layers"


def read_nemo(directory: Path, limits: ValidationLimits) -> CanonicalAdapter:
    """Parse the one ``.nemo`` file in ``directory`` into a ``CanonicalAdapter`` (unvalidated).

    Archive hazards are ``unsafe_archive``, the checkpoint is unpickled weights-only
    (``unsafe_pickle``), and config faults are ``malformed_config`` / ``missing_file``.
    """
    nemo_files = sorted(p for p in directory.iterdir() if p.name.endswith(".nemo"))
    if len(nemo_files) != 1:
        raise AdapterInvalid(
            "mixed_formats", f"expected exactly one .nemo file, found {len(nemo_files)}"
        )
    archive = nemo_files[0]
    members = read_tar_members(archive, {CONFIG_MEMBER, WEIGHTS_MEMBER, _RANK0_WEIGHTS}, limits)
    if CONFIG_MEMBER not in members:
        raise AdapterInvalid("missing_file", f"{archive.name} has no {CONFIG_MEMBER}")
    if len(members[CONFIG_MEMBER]) > MAX_CONFIG_BYTES:
        raise AdapterInvalid("file_too_large", f"{archive.name}: {CONFIG_MEMBER} is too large")
    config = _parse_config(members[CONFIG_MEMBER], archive.name)
    lora = config["peft"]["lora_tuning"]
    rank = check_rank(lora.get("adapter_dim"), limits, f"{archive.name} adapter_dim")
    alpha = lora.get("alpha")
    if alpha is None:
        alpha = rank
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise AdapterInvalid("malformed_config", f"{archive.name}: alpha {alpha!r} is not a number")
    alpha = float(alpha)
    for size_key in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
        if config.get(size_key) not in (None, 0, 1):
            raise AdapterInvalid(
                "malformed_config",
                f"{archive.name}: {size_key}={config[size_key]}; only unsharded checkpoints "
                "(TP=PP=1) are supported",
            )
    weights_bytes = members.get(WEIGHTS_MEMBER) or members.get(_RANK0_WEIGHTS)
    if weights_bytes is None:
        raise AdapterInvalid("missing_weights", f"{archive.name} has no {WEIGHTS_MEMBER}")
    state = torch_load_weights_only(weights_bytes, f"{archive.name}/{WEIGHTS_MEMBER}")
    weights = _unfuse(state, config, archive.name)
    if not weights:
        raise AdapterInvalid("missing_weights", f"{archive.name} holds no LoRA tensors")
    return CanonicalAdapter.from_weights("nemo", rank, alpha, weights)


def _parse_config(data: bytes, archive: str) -> dict[str, Any]:
    config = parse_config_yaml(data, f"{archive}: {CONFIG_MEMBER}")
    if not isinstance(config, dict):
        raise AdapterInvalid("malformed_config", f"{archive}: {CONFIG_MEMBER} is not a mapping")
    lora = (
        (config.get("peft") or {}).get("lora_tuning")
        if isinstance(config.get("peft"), dict)
        else None
    )
    if not isinstance(lora, dict):
        raise AdapterInvalid(
            "malformed_config", f"{archive}: {CONFIG_MEMBER} has no peft.lora_tuning section"
        )
    return config


def _qkv_dims(config: dict[str, Any], archive: str) -> tuple[int, int, int]:
    """(num_heads, num_query_groups, head_dim) from the NeMo model config."""
    try:
        heads = int(config["num_attention_heads"])
        groups = int(config.get("num_query_groups") or heads)
        head_dim = int(config.get("kv_channels") or int(config["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise AdapterInvalid(
            "malformed_config",
            f"{archive}: {CONFIG_MEMBER} lacks the attention dimensions to split QKV ({exc})",
        ) from None
    if heads <= 0 or groups <= 0 or head_dim <= 0 or heads % groups:
        raise AdapterInvalid(
            "malformed_config",
            f"{archive}: heads={heads} / num_query_groups={groups} / head_dim={head_dim} invalid",
        )
    return heads, groups, head_dim


def _qkv_row_index(heads: int, groups: int, head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Row indices of q, k and v inside Megatron's per-group interleaved fused QKV output."""
    per_group = heads // groups
    block = per_group + 2
    q_heads = torch.cat([torch.arange(g * block, g * block + per_group) for g in range(groups)])
    k_heads = torch.arange(per_group, groups * block, block)
    v_heads = torch.arange(per_group + 1, groups * block, block)

    def rows(head_ids: Tensor) -> Tensor:
        return (head_ids[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)

    return rows(q_heads), rows(k_heads), rows(v_heads)


def _unfuse(
    state: dict[str, Tensor], config: dict[str, Any], archive: str
) -> dict[tuple[int, str], tuple[Tensor, Tensor]]:
    halves: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, tensor in state.items():
        m = _KEY.match(key)
        if m is None:
            raise AdapterInvalid(
                "unsupported_module", f"{archive}: tensor {key!r} is not a supported LoRA weight"
            )
        check_float_tensor(tensor, f"{archive}: tensor {key!r}")
        slot = (int(m["layer"]), m["adapter"])
        halves.setdefault(slot, {})[m["io"]] = tensor.detach().to(torch.float32).contiguous()
    weights: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}
    for (layer, adapter), pair in sorted(halves.items()):
        if set(pair) != {"in", "out"}:
            raise AdapterInvalid(
                "missing_weights",
                f"{archive}: layer {layer} {adapter} lacks linear_in or linear_out",
            )
        a, b = pair["in"], pair["out"]
        if a.dim() != 2 or b.dim() != 2:
            raise AdapterInvalid(
                "shape_mismatch",
                f"{archive}: layer {layer} {adapter}: linear_in {tuple(a.shape)} / linear_out "
                f"{tuple(b.shape)} must be 2-D",
            )
        if adapter in _SIMPLE:
            weights[(layer, _SIMPLE[adapter])] = (a, b)
        elif adapter == "lora_kqv_adapter":
            heads, groups, head_dim = _qkv_dims(config, archive)
            # Compared before the row index is built: hostile dimensions must not allocate.
            expected = (heads + 2 * groups) * head_dim
            if b.shape[0] != expected:
                raise AdapterInvalid(
                    "shape_mismatch",
                    f"{archive}: layer {layer} lora_kqv_adapter.linear_out has {b.shape[0]} rows, "
                    f"fused QKV of {heads} heads / {groups} groups x {head_dim} needs {expected}",
                )
            q_rows, k_rows, v_rows = _qkv_row_index(heads, groups, head_dim)
            for module, rows in (("q_proj", q_rows), ("k_proj", k_rows), ("v_proj", v_rows)):
                weights[(layer, module)] = (a.clone(), b[rows].contiguous())
        else:  # lora_hto4h_adapter: gate rows, then up rows
            if b.shape[0] % 2:
                raise AdapterInvalid(
                    "shape_mismatch",
                    f"{archive}: layer {layer} lora_hto4h_adapter.linear_out has an odd "
                    f"{b.shape[0]} rows; expected gate and up halves",
                )
            gate, up = b.split(b.shape[0] // 2)
            weights[(layer, "gate_proj")] = (a.clone(), gate.contiguous())
            weights[(layer, "up_proj")] = (a.clone(), up.contiguous())
    return weights


def write_nemo(
    adapter: CanonicalAdapter,
    directory: Path,
    spec: BaseModelSpec,
    *,
    variant: Literal["auto", "nemo", "canonical"] = "auto",
    filename: str = "adapter.nemo",
) -> Path:
    """Write ``adapter`` as a ``.nemo`` tar in ``directory``; returns the file's path.

    ``variant="nemo"`` fuses QKV (and gate+up), which is exact only when those modules share
    one A; ``"auto"`` fuses where they do and falls back to NeMo's unfused "canonical" keys
    otherwise. Reading the result back with ``read_nemo`` reproduces ``adapter`` exactly.
    """
    fused_qkv, fused_mlp = _fusable(adapter, "qkv"), _fusable(adapter, "mlp")
    if variant == "canonical":
        fused_qkv = fused_mlp = False
    elif variant == "nemo" and not (fused_qkv and fused_mlp):
        raise ValueError("variant='nemo' needs q/k/v (and gate/up) present with a shared A")
    heads, groups, head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
    q_rows, k_rows, v_rows = _qkv_row_index(heads, groups, head_dim)
    state: dict[str, Tensor] = {}
    done: set[tuple[int, str]] = set()
    for (layer, module), (a, b) in sorted(adapter.weights.items()):
        attn = f"{_PREFIX}.{layer}.self_attention.adapter_layer"
        mlp = f"{_PREFIX}.{layer}.mlp.adapter_layer"
        if module in ("q_proj", "k_proj", "v_proj") and fused_qkv:
            if (layer, "qkv") in done:
                continue
            done.add((layer, "qkv"))
            parts = {m: adapter.weights[(layer, m)][1] for m in ("q_proj", "k_proj", "v_proj")}
            fused = torch.empty((heads + 2 * groups) * head_dim, adapter.rank)
            fused[q_rows], fused[k_rows], fused[v_rows] = (
                parts["q_proj"], parts["k_proj"], parts["v_proj"]
            )  # fmt: skip
            state[f"{attn}.lora_kqv_adapter.linear_in.weight"] = a.clone()
            state[f"{attn}.lora_kqv_adapter.linear_out.weight"] = fused
        elif module in ("gate_proj", "up_proj") and fused_mlp:
            if (layer, "mlp") in done:
                continue
            done.add((layer, "mlp"))
            gate_b, up_b = (
                adapter.weights[(layer, "gate_proj")][1],
                adapter.weights[(layer, "up_proj")][1],
            )
            state[f"{mlp}.lora_hto4h_adapter.linear_in.weight"] = a.clone()
            state[f"{mlp}.lora_hto4h_adapter.linear_out.weight"] = torch.cat([gate_b, up_b])
        else:
            base = attn if module in ("q_proj", "k_proj", "v_proj", "o_proj") else mlp
            name = {v: k for k, v in _SIMPLE.items()}[module]
            state[f"{base}.{name}.linear_in.weight"] = a.clone()
            state[f"{base}.{name}.linear_out.weight"] = b.clone()
    targets = []
    if any(m in adapter.target_modules for m in ("q_proj", "k_proj", "v_proj")):
        targets.append("attention_qkv")
    if "o_proj" in adapter.target_modules:
        targets.append("attention_dense")
    if any(m in adapter.target_modules for m in ("gate_proj", "up_proj")):
        targets.append("mlp_fc1")
    if "down_proj" in adapter.target_modules:
        targets.append("mlp_fc2")
    config = {
        "hidden_size": spec.hidden_size,
        "ffn_hidden_size": spec.intermediate_size,
        "num_layers": spec.num_layers,
        "num_attention_heads": heads,
        "num_query_groups": groups,
        "kv_channels": head_dim,
        "tensor_model_parallel_size": 1,
        "pipeline_model_parallel_size": 1,
        "peft": {
            "peft_scheme": "lora",
            "lora_tuning": {
                "variant": "nemo" if (fused_qkv or fused_mlp) else "canonical",
                "target_modules": targets,
                "adapter_dim": adapter.rank,
                "alpha": adapter.alpha,
                "adapter_dropout": 0.0,
            },
        },
    }
    ckpt = io.BytesIO()
    torch.save(state, ckpt)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    with tarfile.open(path, "w") as tf:
        for name, data in (
            (CONFIG_MEMBER, yaml.safe_dump(config, sort_keys=True).encode()),
            (WEIGHTS_MEMBER, ckpt.getvalue()),
        ):
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _fusable(adapter: CanonicalAdapter, group: str) -> bool:
    modules = ("q_proj", "k_proj", "v_proj") if group == "qkv" else ("gate_proj", "up_proj")
    layers = {layer for layer, m in adapter.weights if m in modules}
    for layer in layers:
        pairs = [adapter.weights.get((layer, m)) for m in modules]
        if any(p is None for p in pairs):
            return False
        first = pairs[0][0]
        if not all(torch.equal(first, p[0]) for p in pairs[1:]):
            return False
    return bool(layers)
