"""Detect an adapter directory's format and load it through the right parser."""

from __future__ import annotations

from pathlib import Path

import structlog

from store.errors import AdapterInvalid
from store.formats.guards import check_directory_size
from store.formats.spec import BaseModelSpec, CanonicalAdapter, ValidationLimits
from store.formats.validate import check_rank, validate_adapter

log = structlog.get_logger(__name__)

HF_PEFT, NEMO, TRTLLM = "hf_peft", "nemo", "trtllm"
FORMATS = (HF_PEFT, NEMO, TRTLLM)

_HF_FILES = {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"}
_TRTLLM_FILES = {
    "model.lora_config.npy",
    "model.lora_config.bin",
    "model.lora_weights.npy",
    "model.lora_weights.bin",
}


def detect_format(path: Path) -> str:
    """Return ``"hf_peft"``, ``"nemo"`` or ``"trtllm"`` from the file names in ``path``.

    Looks at names only (reads nothing). ``unknown_format`` when no format's marker files
    are present (or ``path`` is not a directory); ``mixed_formats`` when markers of more
    than one format, or more than one ``.nemo`` file, are present.
    """
    path = Path(path)
    if not path.is_dir():
        raise AdapterInvalid("unknown_format", f"{path.name} is not a directory")
    names = {p.name for p in path.iterdir()}
    found = []
    if names & _HF_FILES:
        found.append(HF_PEFT)
    nemo_files = sorted(n for n in names if n.endswith(".nemo"))
    if nemo_files:
        found.append(NEMO)
    if names & _TRTLLM_FILES:
        found.append(TRTLLM)
    if len(found) > 1:
        raise AdapterInvalid(
            "mixed_formats", f"files of several formats in one directory: {', '.join(found)}"
        )
    if not found:
        listing = ", ".join(sorted(names)[:10]) or "nothing"
        raise AdapterInvalid(
            "unknown_format",
            f"no HF PEFT, NeMo or TensorRT-LLM adapter files found (directory holds: {listing})",
        )
    if len(nemo_files) > 1:
        raise AdapterInvalid(
            "mixed_formats",
            f"a NeMo adapter directory holds exactly one .nemo file, found {nemo_files}",
        )
    return found[0]


def load_adapter(
    path: Path, spec: BaseModelSpec | None = None, limits: ValidationLimits | None = None
) -> CanonicalAdapter:
    """Detect, parse and validate the adapter in ``path``; never executes code from it.

    File sizes are checked before any read; shapes are checked against ``spec`` when given.
    Any fault is an ``AdapterInvalid`` with a stable code; on success the adapter is
    canonical (fp32, HF PEFT orientation, sorted ``target_modules``).
    """
    # Imported here so the format modules can import spec/guards without a cycle.
    from store.formats.hf_peft import read_hf_peft
    from store.formats.nemo import read_nemo
    from store.formats.trtllm import read_trtllm

    limits = limits or ValidationLimits()
    path = Path(path)
    fmt = detect_format(path)
    check_directory_size(path, limits)
    if fmt == HF_PEFT:
        adapter = read_hf_peft(path, limits)
    elif fmt == NEMO:
        adapter = read_nemo(path, limits)
    else:
        adapter = read_trtllm(path, limits, spec)
    check_rank(adapter.rank, limits, fmt)
    validate_adapter(adapter, spec, limits)
    log.debug(
        "adapter_loaded",
        format=fmt,
        rank=adapter.rank,
        modules=adapter.target_modules,
        layers=adapter.num_layers,
    )
    return adapter
