"""Adapter formats: the same weights written as HF PEFT, NeMo and TensorRT-LLM load to the same
canonical adapter, and the canonical package works with real ``peft`` + ``transformers``."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from support.factories import random_adapter, write_hf_peft, write_nemo, write_trtllm
from support.tiny import tiny_hf_config, tiny_spec

from store.errors import AdapterInvalid
from store.formats import (
    SUPPORTED_MODULES,
    BaseModelSpec,
    CanonicalAdapter,
    build_manifest,
    detect_format,
    load_adapter,
    manifest_digest,
    write_canonical,
)

WRITERS = {
    "hf_safetensors": lambda a, d: write_hf_peft(a, d),
    "hf_bin": lambda a, d: write_hf_peft(a, d, safetensors=False),
    "nemo": lambda a, d: write_nemo(a, d),
    "trtllm_npy": lambda a, d: write_trtllm(a, d),
    "trtllm_bin": lambda a, d: write_trtllm(a, d, ext="bin"),
    "trtllm_bin_fp16": lambda a, d: write_trtllm(a, d, ext="bin", dtype="float16"),
}
EXPECTED_FORMAT = {"hf": "hf_peft", "ne": "nemo", "tr": "trtllm"}


def effective(
    adapter: CanonicalAdapter,
) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """(A, scaling * B): what the engine computes with, independent of how alpha is stored."""
    return {k: (a, b * adapter.scaling) for k, (a, b) in adapter.weights.items()}


@pytest.mark.parametrize("shared_a", [False, True], ids=["independent_A", "shared_A"])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_format_loads_to_the_same_canonical_weights(
    writer: str, shared_a: bool, tmp_path: Path
) -> None:
    spec = tiny_spec()
    original = random_adapter(spec, rank=4, alpha=8.0, seed=3, shared_a=shared_a)
    WRITERS[writer](original, tmp_path)
    assert detect_format(tmp_path) == EXPECTED_FORMAT[writer[:2]]
    loaded = load_adapter(tmp_path, spec)
    assert loaded.source_format == EXPECTED_FORMAT[writer[:2]]
    assert loaded.rank == 4
    assert loaded.target_modules == sorted(SUPPORTED_MODULES)
    assert loaded.num_layers == spec.num_layers
    assert set(loaded.weights) == set(original.weights)
    want, got = effective(original), effective(loaded)
    # fp32 formats are exact (HF keeps alpha, TRT-LLM folds alpha/r=2 into B exactly);
    # fp16 storage is TRT-LLM's default and rounds.
    atol = 2e-3 if writer.endswith("fp16") else 0.0
    for key in want:
        torch.testing.assert_close(got[key][0], want[key][0], atol=atol, rtol=0)
        torch.testing.assert_close(got[key][1], want[key][1], atol=atol, rtol=0)
    if writer.startswith("hf"):
        assert loaded.alpha == original.alpha
        for key in want:
            assert torch.equal(loaded.weights[key][1], original.weights[key][1])


def test_nemo_writer_fuses_qkv_and_gate_up_when_a_is_shared(tmp_path: Path) -> None:
    spec = tiny_spec()
    adapter = random_adapter(spec, shared_a=True)
    write_nemo(adapter, tmp_path)
    [nemo] = list(tmp_path.glob("*.nemo"))
    with tarfile.open(nemo) as tf:
        names = tf.getnames()
        state = torch.load(
            tf.extractfile("./model_weights.ckpt"), weights_only=True, map_location="cpu"
        )
    assert sorted(names) == ["./model_config.yaml", "./model_weights.ckpt"]
    prefix = "model.decoder.layers.0.self_attention.adapter_layer.lora_kqv_adapter"
    q_out, kv_out = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    assert state[f"{prefix}.linear_in.weight"].shape == (4, spec.hidden_size)
    assert state[f"{prefix}.linear_out.weight"].shape == (q_out + 2 * kv_out, 4)
    fused_mlp = "model.decoder.layers.1.mlp.adapter_layer.lora_hto4h_adapter.linear_out.weight"
    assert state[fused_mlp].shape == (2 * spec.intermediate_size, 4)
    # gate rows first, then up rows
    assert torch.equal(
        state[fused_mlp][: spec.intermediate_size], adapter.weights[(1, "gate_proj")][1]
    )


def test_nemo_fused_qkv_is_interleaved_per_query_group(tmp_path: Path) -> None:
    # Megatron's fused QKV rows, per group: heads/groups q heads, then one k head, one v head.
    spec = tiny_spec()  # 4 heads, 2 groups, head_dim 16
    adapter = random_adapter(spec, modules=("q_proj", "k_proj", "v_proj"), shared_a=True)
    write_nemo(adapter, tmp_path)
    [nemo] = list(tmp_path.glob("*.nemo"))
    with tarfile.open(nemo) as tf:
        state = torch.load(tf.extractfile("./model_weights.ckpt"), weights_only=True)
    fused = state[
        "model.decoder.layers.0.self_attention.adapter_layer.lora_kqv_adapter.linear_out.weight"
    ]
    q_b, k_b, v_b = (adapter.weights[(0, m)][1] for m in ("q_proj", "k_proj", "v_proj"))
    hd = spec.head_dim
    assert torch.equal(fused[0 : 2 * hd], q_b[0 : 2 * hd])  # group 0: q heads 0, 1
    assert torch.equal(fused[2 * hd : 3 * hd], k_b[0:hd])  # group 0: k head 0
    assert torch.equal(fused[3 * hd : 4 * hd], v_b[0:hd])  # group 0: v head 0
    assert torch.equal(fused[4 * hd : 6 * hd], q_b[2 * hd : 4 * hd])  # group 1: q heads 2, 3


def test_subset_of_modules_round_trips(tmp_path: Path) -> None:
    spec = tiny_spec()
    adapter = random_adapter(spec, modules=("q_proj", "v_proj"), rank=2, alpha=16.0)
    write_hf_peft(adapter, tmp_path / "hf")
    write_trtllm(adapter, tmp_path / "trt")
    write_nemo(adapter, tmp_path / "nemo")
    for sub in ("hf", "trt", "nemo"):
        loaded = load_adapter(tmp_path / sub, spec)
        assert loaded.target_modules == ["q_proj", "v_proj"]
        torch.testing.assert_close(
            loaded.weights[(1, "v_proj")][1] * loaded.scaling,
            adapter.weights[(1, "v_proj")][1] * adapter.scaling,
            atol=0,
            rtol=0,
        )


def test_canonical_package_loads_in_peft_and_changes_logits(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = tiny_spec()
    adapter = random_adapter(spec, seed=7)
    write_nemo(adapter, tmp_path / "src")
    loaded = load_adapter(tmp_path / "src", spec)
    files = write_canonical(loaded, tmp_path / "canonical")
    assert sorted(p.name for p in files) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((tmp_path / "canonical" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8.0

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(**tiny_hf_config())).eval()
    ids = torch.tensor([[1, 5, 9, 33, 100]])
    with torch.no_grad():
        before = base(ids).logits.clone()
        model = PeftModel.from_pretrained(base, tmp_path / "canonical").eval()
        after = model(ids).logits
    assert not torch.allclose(before, after, atol=1e-4)
    # peft loaded exactly our tensors (no silent key mismatch leaving zeros or random init)
    lora_a = model.base_model.model.model.layers[1].self_attn.k_proj.lora_A["default"].weight
    assert torch.equal(lora_a, loaded.weights[(1, "k_proj")][0])


def test_canonical_output_is_deterministic(tmp_path: Path) -> None:
    adapter = random_adapter(tiny_spec())
    write_canonical(adapter, tmp_path / "a")
    write_canonical(adapter, tmp_path / "b")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_in_memory_canonical_package_is_the_written_one(tmp_path: Path) -> None:
    """Registration stores ``canonical_files`` (no temporary copy); its bytes must be what
    ``write_canonical`` writes (and what earlier registrations stored), or equal adapters
    would stop sharing canonical blobs."""
    from safetensors.torch import save_file

    from store.formats.canonical import canonical_files

    adapter = random_adapter(tiny_spec(), rank=4)
    written = {p.name: p.read_bytes() for p in write_canonical(adapter, tmp_path / "w")}
    assert canonical_files(adapter) == written
    save_file(adapter.state_dict(), str(tmp_path / "old.safetensors"), metadata={"format": "pt"})
    old = (tmp_path / "old.safetensors").read_bytes()  # how canonical weights were written
    assert written["adapter_model.safetensors"] == old


def test_manifest_records_what_was_validated() -> None:
    spec = tiny_spec()
    adapter = random_adapter(spec, rank=8, alpha=16.0, modules=("q_proj", "o_proj"))
    files = {"adapter_model.safetensors": ("ab" * 32, 1234)}
    manifest = build_manifest(adapter, spec, files)
    assert manifest["rank"] == 8 and manifest["alpha"] == 16.0
    assert manifest["target_modules"] == ["o_proj", "q_proj"]
    assert manifest["source_format"] == "hf_peft"
    assert BaseModelSpec.from_dict(manifest["base_model_spec"]) == spec
    assert manifest["files"] == {"adapter_model.safetensors": {"sha256": "ab" * 32, "size": 1234}}
    assert json.loads(json.dumps(manifest)) == manifest
    assert manifest_digest(manifest) == manifest_digest(json.loads(json.dumps(manifest)))
    other = build_manifest(adapter, spec, {"adapter_model.safetensors": ("cd" * 32, 1234)})
    assert manifest_digest(other) != manifest_digest(manifest)


def test_spec_from_hf_config_derives_shapes() -> None:
    spec = BaseModelSpec.from_hf_config(tiny_hf_config())
    assert spec.head_dim == 16
    assert spec.module_shapes() == {
        "q_proj": (64, 64),
        "k_proj": (64, 32),
        "v_proj": (64, 32),
        "o_proj": (64, 64),
        "gate_proj": (64, 128),
        "up_proj": (64, 128),
        "down_proj": (128, 64),
    }
    assert BaseModelSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "overrides",
    [
        {"hidden_size": 0},
        {"num_attention_heads": 3},
        {"num_key_value_heads": 3},
        {"vocab_size": "x"},
    ],
)
def test_unusable_base_config_is_invalid_base_model(overrides: dict) -> None:
    with pytest.raises(AdapterInvalid) as err:
        BaseModelSpec.from_hf_config(tiny_hf_config(**overrides))
    assert err.value.code == "invalid_base_model"


def test_base_config_missing_a_dimension_is_invalid_base_model() -> None:
    config = tiny_hf_config()
    del config["intermediate_size"]
    with pytest.raises(AdapterInvalid, match="intermediate_size") as err:
        BaseModelSpec.from_hf_config(config)
    assert err.value.code == "invalid_base_model"


def test_peft_in_memory_key_names_with_adapter_name_are_accepted(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    adapter = random_adapter(tiny_spec(), modules=("q_proj",))
    write_hf_peft(adapter, tmp_path)
    renamed = {
        k.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        ): v
        for k, v in adapter.state_dict().items()
    }
    save_file(renamed, str(tmp_path / "adapter_model.safetensors"))
    loaded = load_adapter(tmp_path, tiny_spec())
    assert torch.equal(loaded.weights[(0, "q_proj")][0], adapter.weights[(0, "q_proj")][0])


def test_rslora_scaling_is_folded_into_alpha(tmp_path: Path) -> None:
    adapter = random_adapter(tiny_spec(), rank=4, alpha=8.0, modules=("q_proj",))
    write_hf_peft(adapter, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["use_rslora"] = True
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    loaded = load_adapter(tmp_path, tiny_spec())
    assert loaded.scaling == pytest.approx(8.0 / 4**0.5)


def test_gzipped_nemo_archive_loads(tmp_path: Path) -> None:
    import gzip

    spec = tiny_spec()
    adapter = random_adapter(spec, shared_a=True)
    write_nemo(adapter, tmp_path / "plain")
    [plain] = (tmp_path / "plain").glob("*.nemo")
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "adapter.nemo").write_bytes(gzip.compress(plain.read_bytes()))
    loaded = load_adapter(tmp_path / "gz", spec)
    assert torch.equal(loaded.weights[(0, "k_proj")][1], adapter.weights[(0, "k_proj")][1])


def test_shape_mismatch_names_the_dimension_and_the_base_model(tmp_path: Path) -> None:
    from store.formats.spec import ValidationLimits
    from store.formats.validate import validate_adapter

    trained_on = tiny_spec(hidden_size=128, intermediate_size=256)
    base = BaseModelSpec.from_dict({**tiny_spec().to_dict(), "name": "tiny-llama"})
    adapter = random_adapter(trained_on, modules=("q_proj",))
    with pytest.raises(AdapterInvalid) as err:
        validate_adapter(adapter, base, ValidationLimits())
    assert err.value.code == "shape_mismatch"
    assert "trained for hidden_size 128, tiny-llama has 64" in err.value.message
    down = random_adapter(tiny_spec(intermediate_size=256), modules=("down_proj",))
    with pytest.raises(AdapterInvalid, match="trained for intermediate_size 256, tiny-llama has"):
        validate_adapter(down, base, ValidationLimits())
    assert base == tiny_spec() and "name" not in base.to_dict()  # a label, not a dimension


@pytest.mark.parametrize(
    "config",
    [
        {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 768, "n_layer": 12},
        {"model_type": "gpt2", "n_embd": 768},
    ],
    ids=["architectures", "model_type_only"],
)
def test_a_gpt2_config_is_an_unsupported_architecture(config: dict) -> None:
    with pytest.raises(AdapterInvalid) as err:
        BaseModelSpec.from_hf_config(config)
    assert err.value.code == "invalid_base_model"
    assert "unsupported architecture" in err.value.message
    assert "Llama family" in err.value.message and "LlamaForCausalLM" in err.value.message
