"""Property: corrupting any byte range of a valid adapter file never escapes as anything but
``AdapterInvalid`` (or a still-valid adapter): no crash, hang or foreign exception type."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.factories import random_adapter, write_hf_peft, write_nemo, write_trtllm
from support.tiny import tiny_spec

from store.errors import AdapterInvalid
from store.formats import load_adapter

SPEC = tiny_spec()
_TEMPLATES: dict[str, Path] = {}


def _template(fmt: str) -> Path:
    """One valid adapter per format, written once per test session."""
    if fmt not in _TEMPLATES:
        root = Path(tempfile.mkdtemp(prefix=f"lorafleet-fuzz-{fmt}-"))
        adapter = random_adapter(SPEC, rank=2, modules=("q_proj", "v_proj"), shared_a=True)
        {"hf": write_hf_peft, "hf_bin": lambda a, d: write_hf_peft(a, d, safetensors=False),
         "nemo": write_nemo, "trtllm": write_trtllm}[fmt](adapter, root)  # fmt: skip
        _TEMPLATES[fmt] = root
    return _TEMPLATES[fmt]


@pytest.fixture(scope="module", autouse=True)
def _cleanup_templates():
    yield
    for root in _TEMPLATES.values():
        shutil.rmtree(root, ignore_errors=True)
    _TEMPLATES.clear()


@pytest.mark.parametrize("fmt", ["hf", "hf_bin", "nemo", "trtllm"])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_corrupted_bytes_give_adapter_invalid_or_a_valid_adapter(
    fmt: str, data, tmp_path_factory
) -> None:
    src = _template(fmt)
    work = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(src, work, dirs_exist_ok=True)
    target = data.draw(st.sampled_from(sorted(p.name for p in work.iterdir())))
    blob = bytearray((work / target).read_bytes())
    mode = data.draw(st.sampled_from(["flip", "truncate", "splice"]))
    pos = data.draw(st.integers(0, max(len(blob) - 1, 0)))
    if mode == "flip":
        blob[pos] ^= data.draw(st.integers(1, 255))
    elif mode == "truncate":
        del blob[pos:]
    else:
        blob[pos : pos + 8] = data.draw(st.binary(min_size=1, max_size=8))
    (work / target).write_bytes(bytes(blob))
    try:
        adapter = load_adapter(work, SPEC)
    except AdapterInvalid as exc:
        assert exc.code and exc.detail
    else:
        assert adapter.rank == 2
