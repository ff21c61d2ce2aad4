"""TensorRT-LLM format: ``model.lora_config.{npy,bin}`` + ``model.lora_weights.{npy,bin}``.

Layout (TensorRT-LLM's ``hf_lora_convert.py``): config ``[1, N, 3|4]`` int32 rows
``[module_id, layer_idx, adapter_size(, is_dora)]``; weights ``[1, N, M]``, row i = A
(``[r, in]``) flattened then B (``[out, r]``) flattened, zero-padded to M. The alpha/r scaling
is folded into B, so the format carries no alpha: it loads with ``alpha = rank``
(scaling 1). Module ids follow ``LoraModuleType``; for Llama ``mlp_h_to_4h`` is gate_proj
and ``mlp_gate`` is up_proj. ``attn_qkv`` is split into q/k/v (concatenated, not
interleaved) with the shared A.

``.npy`` files are read with ``np.load(allow_pickle=False)``. ``.bin`` files are what
``ndarray.tofile`` writes: raw, headerless; the config as int32 and the weights as float16
(TensorRT-LLM's default storage type) or float32, told apart by size. Because rows carry no
in/out split, parsing needs the base model's dimensions.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from store.errors import AdapterInvalid
from store.formats.guards import check_file_size
from store.formats.spec import BaseModelSpec, CanonicalAdapter, ValidationLimits
from store.formats.validate import check_rank

MODULE_IDS: dict[str, int] = {
    "attn_qkv": 0,
    "attn_q": 1,
    "attn_k": 2,
    "attn_v": 3,
    "attn_dense": 4,
    "mlp_h_to_4h": 5,
    "mlp_4h_to_h": 6,
    "mlp_gate": 7,
}
HF_TO_TRTLLM = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_dense",
    "gate_proj": "mlp_h_to_4h",
    "down_proj": "mlp_4h_to_h",
    "up_proj": "mlp_gate",
}
_ID_TO_HF = {MODULE_IDS[t]: hf for hf, t in HF_TO_TRTLLM.items()}
_NPY_MAGIC = b"\x93NUMPY"


def _pick(directory: Path, stem: str) -> Path:
    for ext in ("npy", "bin"):
        path = directory / f"model.{stem}.{ext}"
        if path.exists():
            return path
    raise AdapterInvalid("missing_file", f"model.{stem}.npy (or .bin) is missing")


def _load_array(path: Path, limits: ValidationLimits, raw_dtype: str) -> tuple[np.ndarray, bool]:
    """The array in ``path`` and whether it was a raw (headerless) ``.bin``."""
    check_file_size(path, limits.max_file_bytes, follow_symlinks=limits.follow_symlinks)
    data = path.read_bytes()
    if data.startswith(_NPY_MAGIC):
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:  # object arrays need pickle: refused
            raise AdapterInvalid("unsafe_pickle", f"{path.name}: {exc}") from None
        except Exception as exc:
            raise AdapterInvalid(
                "malformed_config", f"{path.name}: unreadable .npy: {exc}"
            ) from None
        if arr.dtype.hasobject:
            raise AdapterInvalid("unsafe_pickle", f"{path.name}: object arrays are refused")
        return arr, False
    if path.suffix == ".npy":
        raise AdapterInvalid("malformed_config", f"{path.name} is not a .npy file (bad magic)")
    if raw_dtype == "int32":
        if len(data) % 4:
            raise AdapterInvalid("malformed_config", f"{path.name}: {len(data)} bytes is not int32")
        return np.frombuffer(data, dtype="<i4"), True
    return np.frombuffer(data, dtype=np.uint8), True  # weights: dtype decided once rows are known


def _config_rows(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 1:  # raw .bin: 4 columns when that splits evenly with is_dora in {0, 1}
        if arr.size % 4 == 0 and arr.size and set(arr.reshape(-1, 4)[:, 3].tolist()) <= {0, 1}:
            arr = arr.reshape(-1, 4)
        elif arr.size % 3 == 0:
            arr = arr.reshape(-1, 3)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[1] not in (3, 4) or not np.issubdtype(arr.dtype, np.integer):
        raise AdapterInvalid(
            "malformed_config",
            f"{name}: expected integer rows [module_id, layer, adapter_size(, is_dora)], "
            f"got shape {arr.shape} dtype {arr.dtype}",
        )
    return arr.astype(np.int64)


def read_trtllm(
    directory: Path, limits: ValidationLimits, spec: BaseModelSpec | None = None
) -> CanonicalAdapter:
    """Parse a TensorRT-LLM LoRA directory into a ``CanonicalAdapter`` (unvalidated).

    ``unknown_base_model`` without ``spec`` (rows need the base dimensions to be split);
    ``malformed_config`` for bad config rows or unknown/DoRA modules; ``shape_mismatch``
    when a row is too short for its module's A and B.
    """
    if spec is None:
        raise AdapterInvalid(
            "unknown_base_model",
            "TensorRT-LLM adapters can only be parsed against a base model spec",
        )
    config_path, weights_path = _pick(directory, "lora_config"), _pick(directory, "lora_weights")
    rows = _config_rows(_load_array(config_path, limits, "int32")[0], config_path.name)
    if rows.shape[0] == 0:
        raise AdapterInvalid("missing_weights", f"{config_path.name} lists no modules")
    shapes = spec.module_shapes()
    q_out, kv_out = shapes["q_proj"][1], shapes["k_proj"][1]
    needed: list[tuple[str, int, int, int, int]] = []  # (module, layer, rank, in, out)
    for row in rows:
        module_id, layer, rank = int(row[0]), int(row[1]), int(row[2])
        if len(row) == 4 and int(row[3]):
            raise AdapterInvalid("malformed_config", f"{config_path.name}: DoRA rows unsupported")
        if module_id == MODULE_IDS["attn_qkv"]:
            module, in_f, out_f = "attn_qkv", spec.hidden_size, q_out + 2 * kv_out
        elif module_id in _ID_TO_HF:
            module = _ID_TO_HF[module_id]
            in_f, out_f = shapes[module]
        else:
            raise AdapterInvalid(
                "unsupported_module",
                f"{config_path.name}: module id {module_id} is not one of {sorted(MODULE_IDS.values())}",
            )
        if layer < 0:
            raise AdapterInvalid("malformed_config", f"{config_path.name}: layer {layer} < 0")
        check_rank(rank, limits, f"{config_path.name} layer {layer} module {module}")
        needed.append((module, layer, rank, in_f, out_f))
    matrix = _weights_matrix(weights_path, limits, len(needed), needed)
    weights: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}
    # Rows carry no dimensions, so an adapter for another base model is caught by its
    # padding: rows are padded with zeros to exactly the longest row (hf_lora_convert).
    widest = max(r * (i + o) for _, _, r, i, o in needed)
    if matrix.shape[1] != widest:
        raise AdapterInvalid(
            "shape_mismatch",
            f"{weights_path.name}: rows hold {matrix.shape[1]} values but this base model's "
            f"modules need at most {widest}: the adapter was made for another base model",
        )
    for i, (module, layer, rank, in_f, out_f) in enumerate(needed):
        row = matrix[i]
        n_a, n_b = rank * in_f, out_f * rank
        if np.any(row[n_a + n_b :]):
            raise AdapterInvalid(
                "shape_mismatch",
                f"{weights_path.name}: row {i} ({module} layer {layer}) has data past A "
                f"[{rank}, {in_f}] and B [{out_f}, {rank}]: made for another base model",
            )
        a = torch.from_numpy(row[:n_a].astype(np.float32).reshape(rank, in_f).copy())
        b = torch.from_numpy(row[n_a : n_a + n_b].astype(np.float32).reshape(out_f, rank).copy())
        parts = [(module, b)]
        if module == "attn_qkv":
            q_b, k_b, v_b = b.split([q_out, kv_out, kv_out])
            parts = [("q_proj", q_b), ("k_proj", k_b), ("v_proj", v_b)]
        for name, part in parts:
            if (layer, name) in weights:
                raise AdapterInvalid(
                    "malformed_config", f"{config_path.name}: layer {layer} {name} listed twice"
                )
            weights[(layer, name)] = (a.clone(), part.contiguous())
    ranks = {r for _, _, r, _, _ in needed}
    if len(ranks) != 1:
        raise AdapterInvalid(
            "invalid_rank",
            f"{config_path.name}: adapter sizes differ across modules: {sorted(ranks)}",
        )
    rank = ranks.pop()
    return CanonicalAdapter.from_weights("trtllm", rank, float(rank), weights)


def _weights_matrix(
    path: Path, limits: ValidationLimits, n_rows: int, needed: list[tuple[str, int, int, int, int]]
) -> np.ndarray:
    arr, raw = _load_array(path, limits, "float")
    if raw:
        # hf_lora_convert pads every row to exactly the longest row, so the byte count fixes
        # the element size: fp16 (TensorRT-LLM's default storage type) or fp32.
        row_len = max(r * (i + o) for _, _, r, i, o in needed)
        for dtype in ("<f2", "<f4"):
            if arr.size == n_rows * row_len * np.dtype(dtype).itemsize:
                arr = arr.view(dtype).reshape(n_rows, row_len)
                break
        else:
            raise AdapterInvalid(
                "shape_mismatch",
                f"{path.name}: {arr.size} raw bytes do not hold {n_rows} rows of {row_len} values",
            )
    elif not np.issubdtype(arr.dtype, np.floating):
        # A .npy says its dtype: integer or boolean weights are refused, never cast.
        raise AdapterInvalid(
            "unsupported_dtype",
            f"{path.name}: weights have dtype {arr.dtype}; LoRA weights must be floating point",
        )
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[0] != n_rows or not np.issubdtype(arr.dtype, np.floating):
        raise AdapterInvalid(
            "shape_mismatch",
            f"{path.name}: expected {n_rows} float rows, got shape {arr.shape} dtype {arr.dtype}",
        )
    return arr


def write_trtllm(
    adapter: CanonicalAdapter, directory: Path, *, ext: str = "npy", dtype: str = "float32"
) -> list[Path]:
    """Write ``adapter`` as TensorRT-LLM LoRA tensors (scaling folded into B), in the layout
    ``hf_lora_convert.py`` produces; ``ext="bin"`` writes raw ``tofile`` bytes instead.
    Returns ``[config_path, weights_path]``."""
    if ext not in ("npy", "bin"):
        raise ValueError(f"ext must be 'npy' or 'bin', not {ext!r}")
    rows, flat = [], []
    for (layer, module), (a, b) in sorted(adapter.weights.items()):
        rows.append([MODULE_IDS[HF_TO_TRTLLM[module]], layer, adapter.rank, 0])
        flat.append(torch.cat([a.reshape(-1), (b * adapter.scaling).reshape(-1)]))
    width = max(t.numel() for t in flat)
    weights = torch.zeros(1, len(flat), width, dtype=torch.float32)
    for i, t in enumerate(flat):
        weights[0, i, : t.numel()] = t
    config = np.asarray([rows], dtype=np.int32)
    values = weights.numpy().astype(dtype)
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / f"model.lora_config.{ext}"
    weights_path = directory / f"model.lora_weights.{ext}"
    if ext == "npy":
        np.save(config_path, config)
        np.save(weights_path, values)
    else:
        config.tofile(config_path)
        values.tofile(weights_path)
    return [config_path, weights_path]
