"""The canonical package (HF PEFT safetensors) and its manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from store.formats.hf_peft import hf_peft_bytes, write_hf_peft
from store.formats.spec import BaseModelSpec, CanonicalAdapter

MANIFEST_VERSION = 1


def write_canonical(
    adapter: CanonicalAdapter, out_dir: Path, *, base_model_name: str | None = None
) -> list[Path]:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (HF PEFT, loadable by
    ``peft.PeftModel.from_pretrained``) into ``out_dir``; returns the two paths.

    Deterministic: the same adapter always produces byte-identical files, so the canonical
    blobs dedupe across re-registrations.
    """
    return write_hf_peft(adapter, out_dir, safetensors=True, base_model_name=base_model_name)


def canonical_files(
    adapter: CanonicalAdapter, *, base_model_name: str | None = None
) -> dict[str, bytes]:
    """``{file name: bytes}`` of the canonical package, byte-identical to what
    ``write_canonical`` writes, without touching the disk (the blob store hashes and writes
    them once)."""
    return hf_peft_bytes(adapter, base_model_name=base_model_name)


def build_manifest(
    adapter: CanonicalAdapter, spec: BaseModelSpec | None, files: dict[str, tuple[str, int]]
) -> dict[str, Any]:
    """The adapter's manifest: rank, alpha, target modules, source format, the base-model spec
    it was validated against, and ``files: {path: {"sha256", "size"}}`` (``files`` maps a
    relative path to ``(sha256 hex, size)``). Keys are plain JSON types only.
    """
    return {
        "manifest_version": MANIFEST_VERSION,
        "source_format": adapter.source_format,
        "rank": adapter.rank,
        "alpha": adapter.alpha,
        "scaling": adapter.scaling,
        "num_layers": adapter.num_layers,
        "target_modules": sorted(adapter.target_modules),
        "base_model_spec": spec.to_dict() if spec is not None else None,
        "files": {
            path: {"sha256": sha, "size": int(size)} for path, (sha, size) in sorted(files.items())
        },
    }


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 hex of the manifest's canonical JSON: equal manifests give equal digests."""
    return hashlib.sha256(canonical_json(manifest)).hexdigest()
