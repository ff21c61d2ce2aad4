"""The hostile-adapter corpus shared by the formats, API and pipeline suites.

* ``MarkerPayload`` / ``make_tar`` / ``member`` / ``nemo_config``: the archive and pickle
  builders (a pickle of ``MarkerPayload`` creates a marker file when unpickled).
* ``CASES``: name -> builder of one hostile or broken upload and the one answer it must get
  (``Case``), under the limits ``MAX_RANK``, ``MAX_FILE``, ``MAX_UPLOAD`` and base model
  ``BASE``.
"""

from __future__ import annotations

import builtins
import io
import itertools
import json
import pickle
import struct
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from support.factories import random_adapter, write_hf_peft, write_nemo, write_trtllm
from support.live_api import directory_files
from support.tiny import tiny_spec


class MarkerPayload:
    """Unpickling this would create ``path``: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (builtins.open, (str(self.path), "w"))


def make_tar(directory: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "hostile.nemo"
    with tarfile.open(path, "w") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


def nemo_config(rank: int = 4) -> bytes:
    return yaml.safe_dump(
        {
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_query_groups": 2,
            "peft": {"lora_tuning": {"adapter_dim": rank, "alpha": 8}},
        }
    ).encode()


BASE = "tiny"
MAX_RANK = 16
MAX_FILE = 512 * 1024
MAX_UPLOAD = 4 * 1024 * 1024
SPEC = tiny_spec()
_seeds = itertools.count(100)

Files = list[tuple[str, bytes]]


def fresh_seed() -> int:
    """A seed no earlier call returned (distinct adapters, distinct bytes)."""
    return next(_seeds)


@dataclass
class Case:
    """An upload and the one answer it must get."""

    files: Files
    status: int
    code: str
    base_model: str = BASE
    first: Files | None = None  # uploaded (and accepted) at the same coordinates beforehand
    marker: Path | None = None  # must not exist afterwards
    extra: dict[str, str] = field(default_factory=dict)


# --- builders: each writes into a fresh directory and returns its Case -------------------


def hf_adapter(d: Path, **kw) -> Path:
    """A valid HF PEFT adapter for the tiny model under ``d/src``."""
    return write_hf_peft(random_adapter(SPEC, **kw), d / "src")


def _tar(d: Path, *members: tuple) -> Files:
    make_tar(d / "src", [member("model_config.yaml", nemo_config()), *members])
    return directory_files(d / "src")


def _bad_member(bad: tuple) -> Callable[[Path], Case]:
    return lambda d: Case(_tar(d, bad), 422, "unsafe_archive")


def tar_bomb(d: Path) -> Case:
    info = tarfile.TarInfo("model_weights.ckpt")
    info.size = 50 * 1024**3  # declared, never written
    return Case([("bomb.nemo", info.tobuf() + b"\0" * 4096)], 422, "unsafe_archive")


def too_many_members(d: Path) -> Case:
    return Case(_tar(d, *(member(f"f{i}.txt") for i in range(70))), 422, "unsafe_archive")


def pickle_bin(d: Path, *, raw: bool) -> Case:
    marker = d / "pwned-bin"
    src = write_hf_peft(random_adapter(SPEC), d / "src", safetensors=False)
    payload = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": MarkerPayload(marker)}  # fmt: skip
    if raw:
        (src / "adapter_model.bin").write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, src / "adapter_model.bin")
    return Case(directory_files(src), 422, "unsafe_pickle", marker=marker)


def pickle_ckpt(d: Path) -> Case:
    marker = d / "pwned-ckpt"
    ckpt = d / "ckpt.pt"
    torch.save({"model.decoder.layers.0.x": MarkerPayload(marker)}, ckpt)
    files = _tar(d, member("model_weights.ckpt", ckpt.read_bytes()))
    return Case(files, 422, "unsafe_pickle", marker=marker)


def trtllm_object_array(d: Path) -> Case:
    src = write_trtllm(random_adapter(SPEC), d / "src")
    np.save(src / "model.lora_config.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return Case(directory_files(src), 422, "unsafe_pickle")


def _with_safetensors(d: Path, data: Callable[[bytes], bytes], code: str) -> Case:
    src = hf_adapter(d)
    weights = src / "adapter_model.safetensors"
    weights.write_bytes(data(weights.read_bytes()))
    return Case(directory_files(src), 422, code)


def offsets_beyond_file(old: bytes) -> bytes:
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    header = json.dumps({key: {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 10**9]}})
    return struct.pack("<Q", len(header)) + header.encode() + b"\0" * 64


def non_finite(d: Path, writer: Callable, bad: float) -> Case:
    adapter = random_adapter(SPEC, shared_a=True)
    adapter.weights[(1, "up_proj")][1][3, 1] = bad
    return Case(directory_files(writer(adapter, d / "src")), 422, "non_finite_weights")


def _edit_config(d: Path, edit: Callable[[dict], object], code: str) -> Case:
    src = hf_adapter(d)
    config = json.loads((src / "adapter_config.json").read_text())
    text = edit(config)
    (src / "adapter_config.json").write_text(text if isinstance(text, str) else json.dumps(text))
    return Case(directory_files(src), 422, code)


def other_base_model(d: Path) -> Case:
    other = tiny_spec(hidden_size=96, num_attention_heads=6, num_key_value_heads=2)
    return Case(directory_files(write_nemo(random_adapter(other, shared_a=True), d / "src", other)),
                422, "shape_mismatch")  # fmt: skip


def missing_config(d: Path) -> Case:
    src = hf_adapter(d)
    (src / "adapter_config.json").unlink()
    return Case(directory_files(src), 422, "missing_file")


def mixed_formats(d: Path) -> Case:
    src = hf_adapter(d)
    write_nemo(random_adapter(SPEC), src)
    return Case(directory_files(src), 422, "mixed_formats")


def lm_head(d: Path) -> Case:
    from safetensors.torch import save_file

    adapter = random_adapter(SPEC, modules=("q_proj",))
    src = write_hf_peft(adapter, d / "src")
    state = adapter.state_dict()
    state["base_model.model.lm_head.lora_A.weight"] = torch.ones(4, 64)
    save_file(state, str(src / "adapter_model.safetensors"))
    return Case(directory_files(src), 422, "unsupported_module")


def file_over_limit(d: Path) -> Case:
    src = hf_adapter(d)
    with (src / "adapter_model.safetensors").open("r+b") as fh:
        fh.truncate(MAX_FILE + 1)
    return Case(directory_files(src), 422, "file_too_large")


def upload_over_limit(d: Path) -> Case:
    files = directory_files(hf_adapter(d)) + [("padding.bin", b"\0" * (MAX_UPLOAD + 1))]
    return Case(files, 422, "file_too_large")


def renamed(d: Path, name: str) -> Case:
    files = directory_files(hf_adapter(d))
    return Case([(name, files[0][1]), *files[1:]], 400, "unsafe_path")


def version_conflict(d: Path) -> Case:
    first = directory_files(hf_adapter(d, seed=fresh_seed()))
    changed = [(p, b if p.endswith(".json") else hf_adapter(d / "x", seed=fresh_seed()).joinpath(p)
               .read_bytes()) for p, b in first]  # fmt: skip
    return Case(changed, 409, "version_conflict", first=first)


CASES: dict[str, Callable[[Path], Case]] = {
    "nemo_member_dotdot": _bad_member(member("../escape.yaml")),
    "nemo_member_nested_dotdot": _bad_member(member("./a/../../escape.yaml")),
    "nemo_member_absolute": _bad_member(member("/etc/cron.d/evil")),
    "nemo_member_symlink": _bad_member(member("l", kind=tarfile.SYMTYPE, link="/etc/passwd")),
    "nemo_member_hardlink": _bad_member(member("h", kind=tarfile.LNKTYPE, link="/etc/passwd")),
    "nemo_member_chardev": _bad_member(member("dev", kind=tarfile.CHRTYPE)),
    "nemo_member_fifo": _bad_member(member("fifo", kind=tarfile.FIFOTYPE)),
    "nemo_tar_bomb": tar_bomb,
    "nemo_too_many_members": too_many_members,
    "nemo_not_a_tar": lambda d: Case([("junk.nemo", bytes(range(256)) * 8)], 422, "unsafe_archive"),
    "pickle_adapter_model_bin_torch_zip": lambda d: pickle_bin(d, raw=False),
    "pickle_adapter_model_bin_raw": lambda d: pickle_bin(d, raw=True),
    "pickle_nemo_model_weights_ckpt": pickle_ckpt,
    "pickle_trtllm_object_array": trtllm_object_array,
    "safetensors_truncated": lambda d: _with_safetensors(d, lambda b: b[:-100], "bad_safetensors"),
    "safetensors_header_length_absurd": lambda d: _with_safetensors(
        d, lambda b: struct.pack("<Q", 2**62) + b"{}", "bad_safetensors"
    ),
    "safetensors_offsets_beyond_file": lambda d: _with_safetensors(
        d, offsets_beyond_file, "bad_safetensors"
    ),
    "safetensors_three_bytes": lambda d: _with_safetensors(d, lambda b: b"abc", "bad_safetensors"),
    "file_over_size_limit": file_over_limit,
    "upload_over_size_limit": upload_over_limit,
    "nan_weights_hf_peft": lambda d: non_finite(d, write_hf_peft, float("nan")),
    "inf_weights_nemo": lambda d: non_finite(d, lambda a, p: write_nemo(a, p), float("inf")),
    "nan_weights_trtllm": lambda d: non_finite(d, write_trtllm, float("nan")),
    "rank_zero": lambda d: _edit_config(d, lambda c: {**c, "r": 0}, "invalid_rank"),
    "rank_above_limit": lambda d: Case(
        directory_files(hf_adapter(d, rank=MAX_RANK * 2, modules=("q_proj",))), 422, "rank_too_large"
    ),
    "shapes_of_another_base_model": other_base_model,
    "unknown_base_model": lambda d: Case(
        directory_files(hf_adapter(d)), 422, "unknown_base_model", base_model="no-such-model"
    ),
    "missing_adapter_config": missing_config,
    "malformed_adapter_config_json": lambda d: _edit_config(d, lambda c: "{oops", "malformed_config"),
    "adapter_config_wrong_types": lambda d: _edit_config(
        d, lambda c: {**c, "r": "four"}, "malformed_config"
    ),
    "mixed_formats": mixed_formats,
    "unknown_format": lambda d: Case([("README.md", b"hello")], 422, "unknown_format"),
    "unsupported_module_lm_head": lm_head,
    "upload_name_dotdot": lambda d: renamed(d, "../adapter_config.json"),
    "upload_name_nested_dotdot": lambda d: renamed(d, "sub/../../adapter_config.json"),
    "upload_name_absolute": lambda d: renamed(d, "/etc/adapter_config.json"),
    "upload_name_backslash": lambda d: renamed(d, "..\\adapter_config.json"),
    "changed_file_under_existing_version": version_conflict,
}  # fmt: skip
