"""engine.model prepacking: oneDNN-packed linear weights give the same logits as the weights
as loaded, with and without LoRA rows, and the engine's start-up packs (or not) as set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_model
from engine.lora import LoraBatch, LoraWeights
from engine.model import Linear, ModelArgs, Transformer, pack_linear_weight
from engine.runtime import build_runtime
from tests.engine.test_lora import make_adapter, spec_of
from tests.support.tiny import engine_settings

ONEDNN = pack_linear_weight(torch.zeros(4, 4)) is not None
needs_onednn = pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN")


def logits(model: Transformer, slots: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A prefill of 3 rows (one padded) and then one decode step, each row on its slot."""
    ids = torch.randint(0, 272, (3, 6), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(6).expand(3, 6)
    rows = torch.arange(3)
    lora = None if slots is None else LoraBatch(torch.tensor(slots))
    with torch.inference_mode():
        prefill = model(ids, pos, rows, lora).clone()
        step = model(ids[:, :1], torch.full((3, 1), 6), rows, lora).clone()
    return prefill, step


def with_adapters(model: Transformer) -> Transformer:
    spec = spec_of(model)
    weights = LoraWeights(model.args.module_shapes(), model.args.n_layers, n_slots=2, max_rank=8)
    weights.load_slot(0, make_adapter(spec, rank=8, seed=3))
    weights.load_slot(1, make_adapter(spec, rank=4, seed=4, modules=("q_proj", "down_proj")))
    model.attach_lora(weights)
    return model


def test_this_torch_build_has_onednn() -> None:
    # The pinned CPU wheel ships oneDNN; if a build lacks it the engine still serves (MKL), but
    # this suite must not pass by skipping every packed case, so say so here.
    assert ONEDNN, "torch.backends.mkldnn is unavailable: the packed path is untested"


@needs_onednn
@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_gqa_model_dir"])
@pytest.mark.parametrize("slots", [None, [0, -1, 1], [1, 1, 1]])
def test_packed_weights_give_the_same_logits(
    fixture: str, slots: list[int] | None, request: pytest.FixtureRequest
) -> None:
    model_dir: Path = request.getfixturevalue(fixture)
    plain, _ = load_model(model_dir)
    packed, _ = load_model(model_dir)
    for m in (plain, packed):
        m.setup_caches(max_batch=4, max_seq_len=32)
        with_adapters(m)
    n_linear = sum(isinstance(m, Linear) for m in packed.modules())
    assert packed.prepack(release=True) == n_linear == 7 * packed.args.n_layers + 1
    want, got = logits(plain, slots), logits(packed, slots)
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    if slots is not None:  # the adapters still change the output (the test can fail)
        assert not torch.allclose(logits(packed, None)[1], got[1], atol=1e-3)


@needs_onednn
def test_release_drops_the_unpacked_copy_but_not_tied_embeddings(
    tiny_gqa_model_dir: Path,
) -> None:
    model, _ = load_model(tiny_gqa_model_dir)  # tied embeddings
    q = model.layers[0].attention.q_proj
    shape, dtype = q.weight.shape, q.weight.dtype
    model.prepack(release=True)
    assert q.packed is not None
    assert q.weight.shape == shape and q.weight.dtype == dtype  # callers reading dtype still can
    assert q.weight.untyped_storage().nbytes() <= dtype.itemsize  # one element, not the matrix
    emb = model.tok_embeddings.weight
    assert model.output.weight is emb and emb.untyped_storage().nbytes() == emb.nbytes


def test_nothing_is_packed_where_onednn_cannot() -> None:
    args = ModelArgs(
        vocab_size=64, dim=16, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=8, intermediate_size=32
    )
    with torch.device("meta"):
        model = Transformer(args)
    assert model.prepack(release=True) == 0
    assert all(m.packed is None for m in model.modules() if isinstance(m, Linear))
    assert model.layers[0].attention.q_proj.weight.is_meta  # left as it was


@needs_onednn
@pytest.mark.parametrize("prepack", [True, False])
def test_the_engine_packs_at_start_up_unless_told_not_to(
    prepack: bool, tiny_model_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "adapters"
    source.mkdir()
    settings = engine_settings(tiny_model_dir, prepack=prepack, peft_source=str(source))
    model = build_runtime(settings).scheduler.model
    assert (model.output.packed is not None) == prepack
    assert (model.layers[0].feed_forward.down_proj.packed is not None) == prepack
