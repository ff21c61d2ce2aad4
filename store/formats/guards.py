"""Defensive readers for untrusted adapter files: size caps, safetensors header checks,
weights-only unpickling and in-memory tar reading. Nothing here executes code from a file.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import torch
from safetensors.torch import load as load_safetensors_bytes
from torch import Tensor

from store.errors import AdapterInvalid
from store.formats.parsers import parse_header_json
from store.formats.spec import ValidationLimits

# A real adapter header is a few KiB per hundred tensors; 100 MiB is absurd.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# Config files (json/yaml) are tiny; anything larger is hostile or a mistake.
MAX_CONFIG_BYTES = 1024 * 1024

_DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip
# LoRA weights are floating point; an integer or boolean tensor is refused, never cast.
_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


def check_file_size(path: Path, limit: int, *, follow_symlinks: bool = False) -> int:
    """Return the size of a regular file, refusing it before any read.

    ``missing_file`` if absent, ``unsafe_archive`` if a symlink (unless ``follow_symlinks``)
    or not a regular file, ``file_too_large`` if larger than ``limit``.
    """
    try:
        st = path.stat() if follow_symlinks else path.lstat()
    except FileNotFoundError:
        raise AdapterInvalid("missing_file", f"{path.name} does not exist") from None
    if path.is_symlink() and not follow_symlinks:
        raise AdapterInvalid("unsafe_archive", f"{path.name} is a symlink; refusing to follow it")
    if not path.is_file():
        raise AdapterInvalid("unsafe_archive", f"{path.name} is not a regular file")
    if st.st_size > limit:
        raise AdapterInvalid(
            "file_too_large", f"{path.name} is {st.st_size} bytes, above the limit of {limit}"
        )
    return st.st_size


def check_directory_size(directory: Path, limits: ValidationLimits) -> int:
    """Total bytes of the regular files directly in ``directory``; ``file_too_large`` if any
    file or the total exceeds the limits (checked from metadata, before reading)."""
    total = 0
    for entry in sorted(directory.iterdir()):
        if entry.is_symlink() and not limits.follow_symlinks:
            raise AdapterInvalid("unsafe_archive", f"{entry.name} is a symlink; refusing it")
        if entry.is_file():
            total += check_file_size(
                entry, limits.max_file_bytes, follow_symlinks=limits.follow_symlinks
            )
    if total > limits.max_total_bytes:
        raise AdapterInvalid(
            "file_too_large",
            f"adapter files total {total} bytes, above the limit of {limits.max_total_bytes}",
        )
    return total


def read_small_text(
    path: Path, limit: int = MAX_CONFIG_BYTES, *, follow_symlinks: bool = False
) -> str:
    """Read a config file after checking its size; ``malformed_config`` if not UTF-8."""
    check_file_size(path, limit, follow_symlinks=follow_symlinks)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AdapterInvalid("malformed_config", f"{path.name} is not UTF-8: {exc}") from None


def check_safetensors_header(data: bytes | memoryview, name: str) -> dict[str, dict]:
    """Validate a safetensors blob's header without trusting it, and return its tensor entries.

    Refuses (``bad_safetensors``): files shorter than 8 bytes, header lengths beyond
    ``MAX_SAFETENSORS_HEADER`` or the file, non-JSON headers, unknown dtypes, offsets outside
    the data area or disagreeing with shape x dtype size, and overlapping tensors;
    ``unsupported_dtype`` for a tensor that is not floating point.
    """
    size = len(data)
    if size < 8:
        raise AdapterInvalid("bad_safetensors", f"{name}: {size} bytes, too short for a header")
    (header_len,) = struct.unpack("<Q", bytes(data[:8]))
    if header_len > MAX_SAFETENSORS_HEADER:
        raise AdapterInvalid(
            "bad_safetensors",
            f"{name}: header length {header_len} exceeds {MAX_SAFETENSORS_HEADER}",
        )
    if 8 + header_len > size:
        raise AdapterInvalid(
            "bad_safetensors",
            f"{name}: header length {header_len} runs past the end of the {size}-byte file",
        )
    header = parse_header_json(bytes(data[8 : 8 + header_len]), name)
    if not isinstance(header, dict):
        raise AdapterInvalid("bad_safetensors", f"{name}: header is not a JSON object")
    data_len = size - 8 - header_len
    spans: list[tuple[int, int, str]] = []
    tensors: dict[str, dict] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise AdapterInvalid("bad_safetensors", f"{name}: entry {key!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPE_SIZES:
            raise AdapterInvalid("bad_safetensors", f"{name}: tensor {key!r} has dtype {dtype!r}")
        if dtype not in _FLOAT_DTYPES:
            raise AdapterInvalid(
                "unsupported_dtype",
                f"{name}: tensor {key!r} has dtype {dtype}; LoRA weights must be floating point",
            )
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise AdapterInvalid("bad_safetensors", f"{name}: tensor {key!r} has shape {shape!r}")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise AdapterInvalid(
                "bad_safetensors",
                f"{name}: tensor {key!r} offsets {offsets!r} outside the {data_len}-byte data area",
            )
        numel = 1
        for d in shape:
            numel *= d
        if offsets[1] - offsets[0] != numel * _DTYPE_SIZES[dtype]:
            raise AdapterInvalid(
                "bad_safetensors",
                f"{name}: tensor {key!r} spans {offsets[1] - offsets[0]} bytes but shape "
                f"{shape} x {dtype} needs {numel * _DTYPE_SIZES[dtype]} (truncated or corrupt)",
            )
        spans.append((offsets[0], offsets[1], key))
        tensors[key] = entry
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise AdapterInvalid("bad_safetensors", f"{name}: tensors {a!r} and {b!r} overlap")
    return tensors


def load_safetensors_file(path: Path, limits: ValidationLimits) -> dict[str, Tensor]:
    """Load a safetensors file after size and header checks; ``bad_safetensors`` on any fault."""
    check_file_size(path, limits.max_file_bytes, follow_symlinks=limits.follow_symlinks)
    data = path.read_bytes()
    check_safetensors_header(data, path.name)
    try:
        return load_safetensors_bytes(data)
    except Exception as exc:  # the safetensors parser's own error types vary by version
        raise AdapterInvalid("bad_safetensors", f"{path.name}: {exc}") from None


def torch_load_weights_only(data: bytes, name: str) -> dict[str, Tensor]:
    """Unpickle a torch state dict with ``weights_only=True``; only tensors are kept.

    Any refusal or failure of the restricted unpickler is ``unsafe_pickle``: the file is
    never loaded with the full unpickler, so no code from it can run.
    """
    try:
        obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise AdapterInvalid(
            "unsafe_pickle", f"{name}: refused by the weights-only unpickler: {exc}"
        ) from None
    except Exception as exc:  # truncated zip, bad magic, ...: still not something we load
        raise AdapterInvalid("unsafe_pickle", f"{name}: not a loadable torch file: {exc}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise AdapterInvalid("unsafe_pickle", f"{name}: holds {type(obj).__name__}, not a dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def load_torch_file(path: Path, limits: ValidationLimits) -> dict[str, Tensor]:
    """Size-check then ``torch_load_weights_only`` a ``.bin``/``.ckpt`` file."""
    check_file_size(path, limits.max_file_bytes, follow_symlinks=limits.follow_symlinks)
    return torch_load_weights_only(path.read_bytes(), path.name)


def read_tar_members(path: Path, wanted: set[str], limits: ValidationLimits) -> dict[str, bytes]:
    """Read the ``wanted`` regular members of a tar into memory, never touching the disk.

    Every member header is checked first (``unsafe_archive``): absolute names, ``..``,
    symlinks, hard links, devices and FIFOs, duplicate names, more than
    ``limits.max_archive_members`` members, and declared sizes above the per-file or total
    limits (a tar bomb is refused from its headers, before any data is read). Names are
    matched after dropping a leading ``./``; the result maps the normalized name to bytes.
    """
    check_file_size(path, limits.max_file_bytes, follow_symlinks=limits.follow_symlinks)
    try:
        tf = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise AdapterInvalid("unsafe_archive", f"{path.name}: not a readable tar: {exc}") from None
    with tf:
        members: dict[str, tarfile.TarInfo] = {}
        declared = 0
        count = 0
        while True:
            try:
                info = tf.next()
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise AdapterInvalid("unsafe_archive", f"{path.name}: corrupt tar: {exc}") from None
            if info is None:
                break
            count += 1
            if count > limits.max_archive_members:
                raise AdapterInvalid(
                    "unsafe_archive",
                    f"{path.name}: more than {limits.max_archive_members} members",
                )
            name = _safe_member_name(path.name, info)
            if info.isdir():
                continue
            if not info.isreg():
                raise AdapterInvalid(
                    "unsafe_archive", f"{path.name}: member {info.name!r} is not a regular file"
                )
            if info.size > limits.max_file_bytes:
                raise AdapterInvalid(
                    "unsafe_archive",
                    f"{path.name}: member {info.name!r} declares {info.size} bytes, above "
                    f"{limits.max_file_bytes}",
                )
            declared += info.size
            if declared > limits.max_total_bytes:
                raise AdapterInvalid(
                    "unsafe_archive",
                    f"{path.name}: members declare more than {limits.max_total_bytes} bytes",
                )
            if name in members:
                raise AdapterInvalid("unsafe_archive", f"{path.name}: duplicate member {name!r}")
            members[name] = info
        out: dict[str, bytes] = {}
        for name, info in members.items():
            if name not in wanted:
                continue
            fh = tf.extractfile(info)
            data = fh.read(info.size + 1) if fh is not None else b""
            if len(data) != info.size:
                raise AdapterInvalid(
                    "unsafe_archive",
                    f"{path.name}: member {name!r} has {len(data)} bytes, header says {info.size}",
                )
            out[name] = data
        return out


def _safe_member_name(archive: str, info: tarfile.TarInfo) -> str:
    raw = info.name
    if raw.startswith(("/", "\\")) or (len(raw) > 1 and raw[1] == ":"):
        raise AdapterInvalid("unsafe_archive", f"{archive}: member {raw!r} has an absolute path")
    parts = PurePosixPath(raw.replace("\\", "/")).parts
    if ".." in parts:
        raise AdapterInvalid("unsafe_archive", f"{archive}: member {raw!r} escapes with '..'")
    if info.issym() or info.islnk():
        raise AdapterInvalid(
            "unsafe_archive", f"{archive}: member {raw!r} is a link to {info.linkname!r}"
        )
    if info.ischr() or info.isblk() or info.isfifo() or info.isdev():
        raise AdapterInvalid("unsafe_archive", f"{archive}: member {raw!r} is a device or FIFO")
    return os.path.normpath("/".join(p for p in parts if p != ".")) if parts else ""
