"""Adapter formats: detect, parse, validate and convert HF PEFT, NeMo and TensorRT-LLM LoRA
adapters into one canonical package (HF PEFT safetensors). Nothing here executes code from
an adapter's files; every fault is ``store.errors.AdapterInvalid(code, detail)``.
"""

from store.formats.canonical import build_manifest, canonical_json, manifest_digest, write_canonical
from store.formats.detect import FORMATS, detect_format, load_adapter
from store.formats.hf_peft import write_hf_peft
from store.formats.nemo import write_nemo
from store.formats.spec import (
    SUPPORTED_MODULES,
    BaseModelSpec,
    CanonicalAdapter,
    ValidationLimits,
)
from store.formats.trtllm import write_trtllm
from store.formats.validate import validate_adapter

__all__ = [
    "FORMATS",
    "SUPPORTED_MODULES",
    "BaseModelSpec",
    "CanonicalAdapter",
    "ValidationLimits",
    "build_manifest",
    "canonical_json",
    "detect_format",
    "load_adapter",
    "manifest_digest",
    "validate_adapter",
    "write_canonical",
    "write_hf_peft",
    "write_nemo",
    "write_trtllm",
]
