"""Continuous batching with many adapters on the real tiny model, stepped by hand."""

# Fixtures imported from serving_fixtures are used as parameters.
# ruff: noqa: F401, F811

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from serving_fixtures import peft_root, runtime_factory
from support.factories import write_adapter_dir
from support.tiny import model_spec

from engine.lora_cache import CacheFull
from engine.runtime import EngineRuntime
from engine.sampling import SamplingParams
from engine.scheduler import GenerationRequest, InvalidPrompt, TokenDelta

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


class Collector:
    """A sink that records every delta of one request."""

    def __init__(self) -> None:
        self.deltas: list[TokenDelta] = []

    def __call__(self, delta: TokenDelta) -> None:
        self.deltas.append(delta)

    @property
    def text(self) -> str:
        return "".join(d.text for d in self.deltas)

    @property
    def finish(self) -> str | None:
        return self.deltas[-1].finish_reason if self.deltas else None


def make(
    runtime_factory: Callable[..., EngineRuntime],
    model_dir: Path,
    root: Path,
    names: list[str],
    **overrides: object,
) -> EngineRuntime:
    spec = model_spec(model_dir)
    for i, name in enumerate(names):
        write_adapter_dir(root, name, spec, seed=i + 1)
    runtime = runtime_factory(model_dir, peft_source=str(root), **overrides)
    runtime.reconciler.reconcile()
    return runtime


def submit(
    runtime: EngineRuntime, adapter: str | None, params: SamplingParams = GREEDY, prompt: str = "hi"
) -> tuple[GenerationRequest, Collector]:
    sink = Collector()
    req = GenerationRequest(runtime.tokenizer.encode(prompt), params, sink, adapter=adapter)
    runtime.scheduler.submit(req)
    return req, sink


def drain(runtime: EngineRuntime, max_steps: int = 200) -> list:
    infos = []
    while runtime.scheduler.has_work() and len(infos) < max_steps:
        infos.append(runtime.scheduler.step())
    assert not runtime.scheduler.has_work()
    return infos


def test_requests_with_different_adapters_decode_in_the_same_step(
    runtime_factory,
    tiny_model_dir: Path,
    peft_root: Path,
) -> None:
    runtime = make(runtime_factory, tiny_model_dir, peft_root, ["a1", "a2"])
    sinks = [submit(runtime, a)[1] for a in (None, "a1", "a2", "a1")]
    first = runtime.scheduler.step()
    assert first.prefill == [None, "a1", "a2", "a1"]
    second = runtime.scheduler.step()
    assert second.decode == [None, "a1", "a2", "a1"]  # one forward pass, three models
    drain(runtime)
    assert all(s.finish == "length" for s in sinks)
    assert all(s.deltas[-1].completion_tokens == 6 for s in sinks)


def test_batched_output_equals_each_request_run_alone(
    runtime_factory,
    tiny_model_dir: Path,
    peft_root: Path,
) -> None:
    runtime = make(runtime_factory, tiny_model_dir, peft_root, ["a1", "a2"])
    alone = {}
    for adapter in (None, "a1", "a2"):
        req, _ = submit(runtime, adapter, prompt="a longer prompt")
        drain(runtime)
        alone[adapter] = req.output_ids
    together = [submit(runtime, a, prompt="a longer prompt")[0] for a in ("a2", None, "a1")]
    submit(runtime, "a1", prompt="x")  # a different length in the same prefill
    drain(runtime)
    assert {r.adapter: r.output_ids for r in together} == alone
    assert alone["a1"] != alone[None] and alone["a2"] != alone[None]


def test_distinct_adapters_per_step_are_capped_at_gpu_slots(
    runtime_factory,
    tiny_model_dir: Path,
    peft_root: Path,
) -> None:
    names = ["a", "b", "c", "d"]
    runtime = make(runtime_factory, tiny_model_dir, peft_root, names, max_gpu_loras=2)
    sinks = [submit(runtime, n)[1] for n in names]
    infos = drain(runtime)
    for info in infos:
        assert len({a for a in info.prefill + info.decode if a}) <= 2
    assert max(len(i.decode_adapters) for i in infos) == 2
    assert all(s.finish == "length" for s in sinks)
    assert runtime.cache.gpu.stats.evictions >= 2  # c and d took over freed slots


def test_more_active_adapters_than_cpu_cache_is_cache_full(
    runtime_factory,
    tiny_model_dir: Path,
    peft_root: Path,
) -> None:
    runtime = make(runtime_factory, tiny_model_dir, peft_root, ["a", "b", "c"], max_cpu_loras=2)
    submit(runtime, "a")
    submit(runtime, "b")
    with pytest.raises(CacheFull):
        submit(runtime, "c")
    submit(runtime, "a")  # an already-active adapter is always accepted
    drain(runtime)
    _, sink = submit(runtime, "c")  # room again once a and b are idle
    drain(runtime)
    assert sink.finish == "length"
    assert runtime.cache.cpu.pinned() == {}


def test_stop_string_truncates_and_max_tokens_limits(
    runtime_factory,
    tiny_model_dir: Path,
    peft_root: Path,
) -> None:
    runtime = make(runtime_factory, tiny_model_dir, peft_root, [])
    long = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    _, full = submit(runtime, None, long)
    drain(runtime)
    text = full.text
    assert full.finish == "length" and full.deltas[-1].completion_tokens == 20
    stop = text[5:8]
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, stop=(stop,))
    _, cut = submit(runtime, None, params)
    drain(runtime)
    assert cut.finish == "stop"
    assert cut.text == text[: text.index(stop)]


def test_cancelled_request_is_aborted_and_frees_its_adapter(
    runtime_factory,
    tiny_model_dir: Path,
    peft_root: Path,
) -> None:
    runtime = make(runtime_factory, tiny_model_dir, peft_root, ["a"])
    req, sink = submit(runtime, "a", SamplingParams(max_tokens=100, temperature=0.0))
    runtime.scheduler.step()
    runtime.scheduler.step()
    req.cancel()
    runtime.scheduler.step()
    assert sink.finish == "abort"
    assert runtime.scheduler.running == 0
    assert runtime.cache.cpu.pinned() == {}
    assert len(req.output_ids) < 100


def test_seeded_sampling_is_reproducible(
    runtime_factory,
    tiny_model_dir: Path,
    peft_root: Path,
) -> None:
    runtime = make(runtime_factory, tiny_model_dir, peft_root, [])
    params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    r1, _ = submit(runtime, None, params)
    r2, _ = submit(
        runtime, None, SamplingParams(max_tokens=12, temperature=1.5, seed=8, ignore_eos=True)
    )
    drain(runtime)
    r3, _ = submit(runtime, None, params)
    drain(runtime)
    assert r1.output_ids == r3.output_ids
    assert r1.output_ids != r2.output_ids


def test_out_of_vocabulary_token_ids_are_refused_at_submit(
    runtime_factory,
    tiny_model_dir: Path,
    peft_root: Path,
) -> None:
    runtime = make(runtime_factory, tiny_model_dir, peft_root, [])
    vocab = runtime.scheduler.vocab_size
    for bad in ([vocab], [-5], [1, 2, 999999]):
        with pytest.raises(InvalidPrompt, match="out of range"):
            runtime.scheduler.submit(GenerationRequest(bad, GREEDY, Collector()))
    assert not runtime.scheduler.has_work()


def test_a_failing_request_fails_alone_in_prefill_and_decode(
    runtime_factory,
    tiny_model_dir: Path,
    peft_root: Path,
) -> None:
    """A request whose forward pass raises (here: an index the embedding cannot take, put
    past the admission check) fails by itself; its batch-mates finish normally."""
    runtime = make(runtime_factory, tiny_model_dir, peft_root, ["a1"])
    alone, _ = submit(runtime, "a1")
    drain(runtime)
    reqs = [submit(runtime, a) for a in (None, "a1", None, "a1")]
    reqs[1][0].prompt_ids[0] = 10**6  # breaks this request's prefill
    runtime.scheduler.step()
    reqs[2][0].output_ids[-1] = -7  # breaks this request's next decode
    drain(runtime)
    finishes = [sink.finish for _, sink in reqs]
    assert finishes == ["length", "error", "error", "length"]
    assert "engine error" in (reqs[1][1].deltas[-1].error or "")
    assert reqs[3][0].output_ids == alone.output_ids  # the survivors' output is unchanged
    assert runtime.cache.cpu.pinned() == {} and runtime.scheduler.running == 0
