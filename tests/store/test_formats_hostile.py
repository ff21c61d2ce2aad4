"""Hostile and broken adapters: each is refused with its stable ``AdapterInvalid`` code, a
detail naming the culprit, no code executed, and the input left as it was."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from support.factories import random_adapter, write_hf_peft, write_nemo, write_trtllm
from support.hostile import MarkerPayload, make_tar, member, nemo_config
from support.tiny import tiny_spec

from store.errors import AdapterInvalid
from store.formats import ValidationLimits, load_adapter

SPEC = tiny_spec()


def refused(path: Path, code: str, *, spec=SPEC, limits: ValidationLimits | None = None) -> str:
    """Assert ``load_adapter`` refuses ``path`` with ``code`` and leaves it unchanged."""
    before = _snapshot(path)
    with pytest.raises(AdapterInvalid) as err:
        load_adapter(path, spec, limits or ValidationLimits())
    assert err.value.code == code, f"{err.value.code}: {err.value.detail}"
    assert err.value.http_status == 422
    assert _snapshot(path) == before
    return err.value.detail


def _snapshot(path: Path) -> dict[str, str]:
    if not path.is_dir():
        return {}
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file() and not p.is_symlink()
        else "?"
        for p in sorted(path.iterdir())
    }


# --- detection --------------------------------------------------------------------------


def test_empty_directory_is_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("hi")
    assert "README.md" in refused(tmp_path, "unknown_format")


def test_hf_and_nemo_files_together_are_mixed_formats(tmp_path: Path) -> None:
    write_hf_peft(random_adapter(SPEC), tmp_path)
    write_nemo(random_adapter(SPEC), tmp_path)
    assert "hf_peft" in refused(tmp_path, "mixed_formats")


def test_two_nemo_files_are_mixed_formats(tmp_path: Path) -> None:
    write_nemo(random_adapter(SPEC), tmp_path)
    write_nemo(random_adapter(SPEC, seed=1), tmp_path, filename="second.nemo")
    assert "second.nemo" in refused(tmp_path, "mixed_formats")


# --- HF PEFT config and files ------------------------------------------------------------


def test_weights_without_adapter_config_is_missing_file(tmp_path: Path) -> None:
    write_hf_peft(random_adapter(SPEC), tmp_path)
    (tmp_path / "adapter_config.json").unlink()
    assert "adapter_config.json" in refused(tmp_path, "missing_file")


@pytest.mark.parametrize(
    "text", ["{not json", "[1, 2]", '{"r": "four", "lora_alpha": 8}', '{"r": 4, "lora_alpha": "x"}']
)
def test_malformed_adapter_config_is_refused(tmp_path: Path, text: str) -> None:
    write_hf_peft(random_adapter(SPEC), tmp_path)
    (tmp_path / "adapter_config.json").write_text(text)
    assert "adapter_config.json" in refused(tmp_path, "malformed_config")


def test_config_without_weights_is_missing_weights(tmp_path: Path) -> None:
    write_hf_peft(random_adapter(SPEC), tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    assert "adapter_model.safetensors" in refused(tmp_path, "missing_weights")


def test_lora_a_without_b_is_missing_weights(tmp_path: Path) -> None:
    adapter = random_adapter(SPEC, modules=("q_proj",))
    write_hf_peft(adapter, tmp_path)
    state = {k: v for k, v in adapter.state_dict().items() if "layers.1." not in k or "lora_A" in k}
    save_file(state, str(tmp_path / "adapter_model.safetensors"))
    assert "layer 1 q_proj" in refused(tmp_path, "missing_weights")


def test_symlinked_weights_are_refused(tmp_path: Path) -> None:
    write_hf_peft(random_adapter(SPEC), tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.safetensors"
    (tmp_path / "adapter_model.safetensors").rename(outside)
    (tmp_path / "adapter_model.safetensors").symlink_to(outside)
    assert "symlink" in refused(tmp_path, "unsafe_archive")


# --- pickles -----------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["torch_zip", "raw_pickle"])
def test_malicious_pickle_in_adapter_model_bin_never_runs(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path.parent / f"{tmp_path.name}-pwned-bin"
    write_hf_peft(random_adapter(SPEC), tmp_path, safetensors=False)
    payload = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": MarkerPayload(marker)
    }
    if legacy:
        (tmp_path / "adapter_model.bin").write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, tmp_path / "adapter_model.bin")
    assert "adapter_model.bin" in refused(tmp_path, "unsafe_pickle")
    assert not marker.exists()


def test_malicious_pickle_in_nemo_checkpoint_never_runs(tmp_path: Path) -> None:
    marker = tmp_path.parent / f"{tmp_path.name}-pwned-ckpt"
    buf = io.BytesIO()
    torch.save({"model.decoder.layers.0.x": MarkerPayload(marker)}, buf)
    make_tar(
        tmp_path,
        [
            member("./model_config.yaml", nemo_config()),
            member("./model_weights.ckpt", buf.getvalue()),
        ],
    )
    assert "model_weights.ckpt" in refused(tmp_path, "unsafe_pickle")
    assert not marker.exists()


def test_trtllm_object_array_needs_pickle_and_is_refused(tmp_path: Path) -> None:
    write_trtllm(random_adapter(SPEC), tmp_path)
    np.save(
        tmp_path / "model.lora_config.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True
    )
    assert "model.lora_config.npy" in refused(tmp_path, "unsafe_pickle")


# --- safetensors -------------------------------------------------------------------------


def _hf_dir(tmp_path: Path) -> Path:
    write_hf_peft(random_adapter(SPEC), tmp_path)
    return tmp_path / "adapter_model.safetensors"


def test_truncated_safetensors_is_bad_safetensors(tmp_path: Path) -> None:
    path = _hf_dir(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    assert "adapter_model.safetensors" in refused(tmp_path, "bad_safetensors")


def test_absurd_safetensors_header_length_is_refused_before_parsing(tmp_path: Path) -> None:
    path = _hf_dir(tmp_path)
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    assert "header length" in refused(tmp_path, "bad_safetensors")


def test_safetensors_offsets_beyond_file_are_refused(tmp_path: Path) -> None:
    header = json.dumps(
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": {
            "dtype": "F32", "shape": [4, 64], "data_offsets": [0, 10**9]}}
    ).encode()  # fmt: skip
    path = _hf_dir(tmp_path)
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    assert "offsets" in refused(tmp_path, "bad_safetensors")


def test_tiny_file_is_bad_safetensors(tmp_path: Path) -> None:
    _hf_dir(tmp_path).write_bytes(b"abc")
    refused(tmp_path, "bad_safetensors")


def test_oversized_file_is_refused_from_metadata_without_reading(tmp_path: Path) -> None:
    path = _hf_dir(tmp_path)
    with path.open("r+b") as fh:  # sparse: 5 GiB on paper, nothing on disk
        fh.truncate(5 * 1024**3)
    started = time.monotonic()
    with pytest.raises(AdapterInvalid) as err:
        load_adapter(tmp_path, SPEC)
    assert time.monotonic() - started < 2  # reading 5 GiB would take far longer
    assert err.value.code == "file_too_large"
    assert "adapter_model.safetensors" in err.value.detail
    assert path.stat().st_size == 5 * 1024**3


# --- weights and shapes ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("fmt", ["hf", "nemo", "trtllm"])
def test_non_finite_weights_are_refused(tmp_path: Path, bad: float, fmt: str) -> None:
    adapter = random_adapter(SPEC, shared_a=True)
    adapter.weights[(1, "up_proj")][1][3, 1] = bad
    {"hf": write_hf_peft, "nemo": write_nemo, "trtllm": write_trtllm}[fmt](adapter, tmp_path)
    assert "layer 1 up_proj" in refused(tmp_path, "non_finite_weights")


@pytest.mark.parametrize("bad", [(float("-inf"),), (float("inf"), float("-inf"))])
def test_infinities_that_sum_to_nan_are_refused(tmp_path: Path, bad: tuple[float, ...]) -> None:
    adapter = random_adapter(SPEC, shared_a=True)
    for i, value in enumerate(bad):
        adapter.weights[(1, "up_proj")][1][3, i] = value
    write_hf_peft(adapter, tmp_path)
    assert "layer 1 up_proj" in refused(tmp_path, "non_finite_weights")


def test_finite_weights_whose_sum_overflows_are_accepted(tmp_path: Path) -> None:
    # The fast check sums the tensor; a sum that overflows to inf must not refuse it.
    adapter = random_adapter(SPEC, shared_a=True)
    adapter.weights[(1, "up_proj")][1][:4, 0] = 3e38
    write_hf_peft(adapter, tmp_path)
    loaded = load_adapter(tmp_path, SPEC)
    assert float(loaded.weights[(1, "up_proj")][1][0, 0]) == pytest.approx(3e38)


def test_rank_zero_is_invalid_rank(tmp_path: Path) -> None:
    write_hf_peft(random_adapter(SPEC), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "r": 0}))
    refused(tmp_path, "invalid_rank")


def test_nemo_rank_zero_is_invalid_rank(tmp_path: Path) -> None:
    write_nemo(random_adapter(SPEC), tmp_path)
    [nemo] = tmp_path.glob("*.nemo")
    with tarfile.open(nemo) as tf:
        ckpt = tf.extractfile("./model_weights.ckpt").read()
    nemo.unlink()
    make_tar(
        tmp_path, [member("model_config.yaml", nemo_config(0)), member("model_weights.ckpt", ckpt)]
    )
    assert "adapter_dim" in refused(tmp_path, "invalid_rank")


@pytest.mark.parametrize("fmt", ["hf", "nemo", "trtllm"])
def test_rank_above_limit_is_rank_too_large(tmp_path: Path, fmt: str) -> None:
    adapter = random_adapter(SPEC, rank=8)
    {"hf": write_hf_peft, "nemo": write_nemo, "trtllm": write_trtllm}[fmt](adapter, tmp_path)
    assert "8" in refused(tmp_path, "rank_too_large", limits=ValidationLimits(max_rank=4))


def test_rank_differing_across_modules_is_invalid_rank(tmp_path: Path) -> None:
    small = random_adapter(SPEC, rank=2, modules=("q_proj",))
    big = random_adapter(SPEC, rank=4, modules=("v_proj",))
    write_hf_peft(big, tmp_path)
    save_file(
        {**small.state_dict(), **big.state_dict()}, str(tmp_path / "adapter_model.safetensors")
    )
    assert "q_proj" in refused(tmp_path, "invalid_rank")


@pytest.mark.parametrize("fmt", ["hf", "nemo", "trtllm"])
def test_adapter_for_another_base_model_is_shape_mismatch(tmp_path: Path, fmt: str) -> None:
    other = tiny_spec(hidden_size=96, num_attention_heads=6, num_key_value_heads=2)
    adapter = random_adapter(other, shared_a=True)
    writers = {"hf": write_hf_peft, "trtllm": write_trtllm}
    if fmt == "nemo":
        write_nemo(adapter, tmp_path, other)
    else:
        writers[fmt](adapter, tmp_path)
    refused(tmp_path, "shape_mismatch")


def test_layer_beyond_the_base_model_is_shape_mismatch(tmp_path: Path) -> None:
    write_hf_peft(random_adapter(SPEC, layers=3), tmp_path)
    assert "layer index 2" in refused(tmp_path, "shape_mismatch")


def test_lm_head_lora_is_unsupported_module(tmp_path: Path) -> None:
    adapter = random_adapter(SPEC, modules=("q_proj",))
    write_hf_peft(adapter, tmp_path)
    state = adapter.state_dict()
    state["base_model.model.lm_head.lora_A.weight"] = torch.ones(4, 64)
    save_file(state, str(tmp_path / "adapter_model.safetensors"))
    assert "lm_head" in refused(tmp_path, "unsupported_module")


def test_unsupported_target_module_in_config_is_refused(tmp_path: Path) -> None:
    write_hf_peft(random_adapter(SPEC), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "embed_tokens"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    assert "embed_tokens" in refused(tmp_path, "unsupported_module")


def test_unknown_trtllm_module_id_is_unsupported_module(tmp_path: Path) -> None:
    write_trtllm(random_adapter(SPEC, modules=("q_proj",)), tmp_path)
    config = np.load(tmp_path / "model.lora_config.npy")
    config[0, 0, 0] = 42
    np.save(tmp_path / "model.lora_config.npy", config)
    assert "42" in refused(tmp_path, "unsupported_module")


def test_trtllm_needs_a_base_model(tmp_path: Path) -> None:
    write_trtllm(random_adapter(SPEC), tmp_path)
    refused(tmp_path, "unknown_base_model", spec=None)


def test_trtllm_missing_weights_file_is_missing_file(tmp_path: Path) -> None:
    write_trtllm(random_adapter(SPEC), tmp_path)
    (tmp_path / "model.lora_weights.npy").unlink()
    assert "lora_weights" in refused(tmp_path, "missing_file")


# --- .nemo archives ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_member", "why"),
    [
        (member("../escape.yaml"), ".."),
        (member("./a/../../escape.yaml"), ".."),
        (member("/etc/cron.d/evil"), "absolute"),
        (member("link", kind=tarfile.SYMTYPE, link="/etc/passwd"), "link"),
        (member("hard", kind=tarfile.LNKTYPE, link="model_config.yaml"), "link"),
        (member("dev", kind=tarfile.CHRTYPE), "device"),
        (member("blk", kind=tarfile.BLKTYPE), "device"),
        (member("fifo", kind=tarfile.FIFOTYPE), "FIFO"),
    ],
    ids=[
        "dotdot",
        "nested_dotdot",
        "absolute",
        "symlink",
        "hardlink",
        "chardev",
        "blockdev",
        "fifo",
    ],
)
def test_hostile_tar_members_are_unsafe_archive(
    tmp_path: Path, bad_member: tuple, why: str
) -> None:
    make_tar(tmp_path, [member("model_config.yaml", nemo_config()), bad_member])
    assert why in refused(tmp_path, "unsafe_archive")
    assert not (tmp_path.parent / "escape.yaml").exists()


def test_tar_bomb_is_refused_from_its_headers(tmp_path: Path) -> None:
    info = tarfile.TarInfo("model_weights.ckpt")
    info.size = 50 * 1024**3  # declared, never written
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "bomb.nemo").write_bytes(info.tobuf() + b"\0" * 4096)
    started = time.monotonic()
    assert "declares" in refused(tmp_path, "unsafe_archive")
    assert time.monotonic() - started < 2


def test_too_many_members_is_unsafe_archive(tmp_path: Path) -> None:
    make_tar(tmp_path, [member(f"f{i}.txt") for i in range(70)])
    assert "more than 64" in refused(tmp_path, "unsafe_archive")


def test_nemo_without_config_is_missing_file(tmp_path: Path) -> None:
    make_tar(tmp_path, [member("model_weights.ckpt", b"abc")])
    assert "model_config.yaml" in refused(tmp_path, "missing_file")


def test_nemo_without_weights_is_missing_weights(tmp_path: Path) -> None:
    make_tar(tmp_path, [member("model_config.yaml", nemo_config())])
    assert "model_weights.ckpt" in refused(tmp_path, "missing_weights")


def test_nemo_config_without_lora_section_is_malformed(tmp_path: Path) -> None:
    make_tar(
        tmp_path, [member("model_config.yaml", b"hidden_size: 64\n"), member("model_weights.ckpt")]
    )
    assert "lora_tuning" in refused(tmp_path, "malformed_config")


def test_not_a_tar_is_unsafe_archive(tmp_path: Path) -> None:
    (tmp_path / "junk.nemo").write_bytes(os.urandom(2048))
    refused(tmp_path, "unsafe_archive")


def test_symlinks_load_when_the_operator_allows_them(tmp_path: Path) -> None:
    # A HF hub cache snapshot is a tree of symlinks; an engine reading a local tree may opt in.
    write_hf_peft(random_adapter(SPEC), tmp_path / "real")
    (tmp_path / "link").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (tmp_path / "link" / name).symlink_to(tmp_path / "real" / name)
    refused(tmp_path / "link", "unsafe_archive")
    loaded = load_adapter(tmp_path / "link", SPEC, ValidationLimits(follow_symlinks=True))
    assert loaded.rank == 4
