"""Adapters put into a live registry in the shapes the download tests need: one whose
uploaded config differs from the canonical one at the same path, and one whose stored blob
was corrupted behind the registry's back."""

from __future__ import annotations

import json
from pathlib import Path

from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry
from support.tiny import tiny_hf_config


def trainer_style_adapter(
    reg: LiveRegistry, tmp_path: Path, *, name: str = "trainer", seed: int = 6
) -> tuple[dict, Path]:
    """A ready ``acme/<name>@1.0.0`` (base ``tiny``, namespace ``acme`` created ``auto``)
    whose uploaded ``adapter_config.json`` differs from the canonical one at the same path,
    as an HF Trainer writes it; returns (entity, source directory)."""
    reg.admin.register_base_model("tiny", tiny_hf_config())
    reg.admin.create_namespace("acme", approval_policy="auto")
    src = write_hf_peft(random_adapter(seed=seed), tmp_path / f"{name}-src")
    config = json.loads((src / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "meta-llama/tiny"
    (src / "adapter_config.json").write_text(json.dumps(config, indent=4))
    entity = reg.admin.upload_adapter(
        src, namespace="acme", name=name, version="1.0.0", base_model="tiny"
    )
    by_role = {
        f["role"]: f["sha256"] for f in entity["files"] if f["path"] == "adapter_config.json"
    }
    assert by_role["original"] != by_role["canonical"], "the case these tests are about"
    return entity, src


def corrupt_canonical_weights(reg: LiveRegistry, entity: dict) -> dict:
    """Flip the last byte of the stored canonical weights blob (same length, other bytes:
    only a digest check notices); returns that file's entry."""
    weights = next(
        f
        for f in entity["files"]
        if f["role"] == "canonical" and f["path"] == "adapter_model.safetensors"
    )
    blob = reg.blobs.path_for(f"sha256/{weights['sha256']}")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    return weights
