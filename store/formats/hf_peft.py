"""HF PEFT format: ``adapter_config.json`` + ``adapter_model.safetensors`` (or ``.bin``).

This is also the canonical package format: ``write_hf_peft`` output loads with
``peft.PeftModel.from_pretrained``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor

from store.errors import AdapterInvalid
from store.formats.guards import load_safetensors_file, load_torch_file, read_small_text
from store.formats.parsers import match_target_pattern, parse_config_json
from store.formats.spec import SUPPORTED_MODULES, CanonicalAdapter, ValidationLimits
from store.formats.validate import check_float_tensor, check_rank

CONFIG_FILE = "adapter_config.json"
SAFETENSORS_FILE = "adapter_model.safetensors"
BIN_FILE = "adapter_model.bin"

# peft writes `...q_proj.lora_A.weight`; in-memory state dicts carry the adapter name
# (`lora_A.default.weight`); some exporters drop the `base_model.model.` wrapper.
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?:model\.)?layers\.(?P<layer>\d+)\."
    r"(?P<block>self_attn|mlp)\.(?P<module>[A-Za-z0-9_]+)\."
    r"lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_\-]+)?\.weight$"
)


def read_peft_config(directory: Path, *, follow_symlinks: bool = False) -> dict[str, Any]:
    """Parse ``adapter_config.json``; ``missing_file`` / ``malformed_config`` on faults."""
    path = directory / CONFIG_FILE
    if not path.exists():
        raise AdapterInvalid("missing_file", f"{CONFIG_FILE} is missing")
    config = parse_config_json(read_small_text(path, follow_symlinks=follow_symlinks), CONFIG_FILE)
    if not isinstance(config, dict):
        raise AdapterInvalid("malformed_config", f"{CONFIG_FILE} must be a JSON object")
    return config


def _config_rank_alpha(config: dict[str, Any]) -> tuple[int, float, list[str]]:
    peft_type = config.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise AdapterInvalid("malformed_config", f"{CONFIG_FILE}: peft_type {peft_type!r} != LORA")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise AdapterInvalid("malformed_config", f"{CONFIG_FILE}: r={rank!r} is not an integer")
    alpha = config.get("lora_alpha", rank)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise AdapterInvalid(
            "malformed_config", f"{CONFIG_FILE}: lora_alpha={alpha!r} is not a number"
        )
    for flag in ("use_dora",):
        if config.get(flag):
            raise AdapterInvalid("malformed_config", f"{CONFIG_FILE}: {flag}=true is not supported")
    if config.get("bias", "none") not in ("none", None):
        raise AdapterInvalid(
            "malformed_config", f"{CONFIG_FILE}: bias={config['bias']!r} unsupported"
        )
    for pattern in ("rank_pattern", "alpha_pattern"):
        if config.get(pattern):
            raise AdapterInvalid(
                "malformed_config", f"{CONFIG_FILE}: per-module {pattern} is not supported"
            )
    if config.get("use_rslora") and isinstance(rank, int) and rank > 0:
        # rsLoRA scales by alpha/sqrt(r); fold it into alpha so that scaling stays alpha/r.
        alpha = float(alpha) * math.sqrt(rank)
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        targets = match_target_pattern(targets, SUPPORTED_MODULES, CONFIG_FILE)
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise AdapterInvalid("malformed_config", f"{CONFIG_FILE}: target_modules is malformed")
    for target in targets:
        if target.rsplit(".", 1)[-1] not in SUPPORTED_MODULES:
            raise AdapterInvalid(
                "unsupported_module",
                f"{CONFIG_FILE}: target module {target!r} is not one of {list(SUPPORTED_MODULES)}",
            )
    return rank, float(alpha), targets


def parse_peft_state_dict(
    state: dict[str, Tensor], source: str
) -> dict[tuple[int, str], tuple[Tensor, Tensor]]:
    """Map PEFT key names to ``(layer, module) -> (A, B)`` in fp32.

    ``unsupported_module`` for any key that is not a LoRA A/B of a supported Llama module
    (embeddings, lm_head, biases, modules_to_save); ``missing_weights`` if a pair is
    incomplete or nothing is found.
    """
    halves: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, tensor in state.items():
        m = _KEY.match(key)
        if m is None or m["module"] not in SUPPORTED_MODULES:
            raise AdapterInvalid(
                "unsupported_module", f"{source}: tensor {key!r} is not a supported LoRA weight"
            )
        check_float_tensor(tensor, f"{source}: tensor {key!r}")
        slot = (int(m["layer"]), m["module"])
        if m["ab"] in halves.setdefault(slot, {}):
            raise AdapterInvalid("malformed_config", f"{source}: duplicate tensor for {key!r}")
        halves[slot][m["ab"]] = tensor
    if not halves:
        raise AdapterInvalid("missing_weights", f"{source} holds no LoRA tensors")
    weights: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}
    for (layer, module), ab in sorted(halves.items()):
        if set(ab) != {"A", "B"}:
            raise AdapterInvalid(
                "missing_weights",
                f"{source}: layer {layer} {module} has lora_{''.join(ab)} but not both A and B",
            )
        weights[(layer, module)] = (_as_fp32(ab["A"]), _as_fp32(ab["B"]))
    return weights


def _as_fp32(t: Tensor) -> Tensor:
    return t.detach().to(dtype=torch.float32, device="cpu").contiguous()


def read_hf_peft(directory: Path, limits: ValidationLimits) -> CanonicalAdapter:
    """Parse a HF PEFT directory into a ``CanonicalAdapter`` (not yet validated).

    Prefers ``adapter_model.safetensors``; ``adapter_model.bin`` is read only with the
    weights-only unpickler.
    """
    config = read_peft_config(directory, follow_symlinks=limits.follow_symlinks)
    rank, alpha, _targets = _config_rank_alpha(config)
    # Refuse a bad rank from the config before reading a possibly huge weights file.
    check_rank(rank, limits, CONFIG_FILE)
    if (directory / SAFETENSORS_FILE).exists():
        state = load_safetensors_file(directory / SAFETENSORS_FILE, limits)
        source = SAFETENSORS_FILE
    elif (directory / BIN_FILE).exists():
        state = load_torch_file(directory / BIN_FILE, limits)
        source = BIN_FILE
    else:
        raise AdapterInvalid(
            "missing_weights", f"neither {SAFETENSORS_FILE} nor {BIN_FILE} is present"
        )
    weights = parse_peft_state_dict(state, source)
    return CanonicalAdapter.from_weights("hf_peft", rank, alpha, weights)


def peft_config_dict(adapter: CanonicalAdapter, base_model_name: str | None = None) -> dict:
    """The ``adapter_config.json`` contents peft's ``LoraConfig`` accepts for this adapter."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "target_modules": sorted(adapter.target_modules),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "base_model_name_or_path": base_model_name,
        "use_rslora": False,
        "use_dora": False,
    }


def _config_text(adapter: CanonicalAdapter, base_model_name: str | None) -> str:
    """``adapter_config.json`` as written: sorted keys, two-space indent, a final newline."""
    return json.dumps(peft_config_dict(adapter, base_model_name), indent=2, sort_keys=True) + "\n"


def hf_peft_bytes(
    adapter: CanonicalAdapter, *, base_model_name: str | None = None
) -> dict[str, bytes]:
    """``{file name: bytes}`` of ``adapter_config.json`` and ``adapter_model.safetensors``,
    exactly what ``write_hf_peft(..., safetensors=True)`` writes, built in memory."""
    return {
        CONFIG_FILE: _config_text(adapter, base_model_name).encode(),
        SAFETENSORS_FILE: save(adapter.state_dict(), metadata={"format": "pt"}),
    }


def write_hf_peft(
    adapter: CanonicalAdapter,
    directory: Path,
    *,
    safetensors: bool = True,
    base_model_name: str | None = None,
) -> list[Path]:
    """Write ``adapter_config.json`` and the weights (safetensors, or a torch ``.bin``).

    Output is deterministic for equal adapters: sorted keys, no timestamps.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if safetensors:
        paths = []
        for name, data in hf_peft_bytes(adapter, base_model_name=base_model_name).items():
            (directory / name).write_bytes(data)
            paths.append(directory / name)
        return paths
    config_path = directory / CONFIG_FILE
    config_path.write_text(_config_text(adapter, base_model_name))
    weights_path = directory / BIN_FILE
    torch.save(adapter.state_dict(), weights_path)
    return [config_path, weights_path]
