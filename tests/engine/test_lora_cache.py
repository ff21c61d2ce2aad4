"""engine.lora_cache (the LoRA residency): LRU order, pinning, stats, refusal without half-loading."""

from __future__ import annotations

import threading

import pytest
import torch
from support.factories import random_adapter
from support.tiny import tiny_spec

from engine.lora import LoraWeights
from engine.lora_cache import CacheFull, CpuCache, GpuSlots
from engine.settings import EngineSettings
from store.errors import AdapterInvalid
from store.formats import validate_adapter

SPEC = tiny_spec()
LIMITS = EngineSettings(max_lora_rank=8).adapter_limits()


def validated(loader):  # type: ignore[no-untyped-def]
    """``loader`` as the PEFT source runs it: every adapter validated before the cache."""

    def load(name: str) -> object:
        adapter = loader(name)
        validate_adapter(adapter, SPEC, LIMITS)
        return adapter

    return load


def make_cpu(capacity: int, validate: bool = False) -> tuple[CpuCache, list[str]]:
    loaded: list[str] = []

    def loader(name: str) -> object:
        loaded.append(name)
        return random_adapter(SPEC, rank=2, seed=len(loaded))

    return CpuCache(capacity, validated(loader) if validate else loader), loaded


def make_slots(n_slots: int = 2, max_rank: int = 8) -> tuple[GpuSlots, LoraWeights]:
    weights = LoraWeights(SPEC.module_shapes(), SPEC.num_layers, n_slots, max_rank)
    return GpuSlots(weights, n_slots), weights


def slot_is_empty(weights: LoraWeights, slot: int) -> bool:
    return weights.slot_rank[slot] == 0 and all(
        not a[slot].any() and not weights.B[k][slot].any() for k, a in weights.A.items()
    )


def test_cpu_cache_evicts_least_recently_used_and_counts() -> None:
    cpu, loaded = make_cpu(2)
    for name in ("a", "b"):
        cpu.acquire(name)
        cpu.release(name)
    cpu.acquire("a")  # a is now most recently used
    cpu.release("a")
    cpu.acquire("c")  # evicts b, the least recently used
    cpu.release("c")
    assert cpu.resident() == ["a", "c"]
    assert loaded == ["a", "b", "c"]
    assert (cpu.stats.hits, cpu.stats.misses, cpu.stats.loads, cpu.stats.evictions) == (1, 3, 3, 1)
    assert cpu.stats.load_seconds > 0


def test_pinned_adapters_are_never_evicted_and_overflow_is_cache_full() -> None:
    cpu, _ = make_cpu(2)
    cpu.acquire("a")
    cpu.acquire("b")
    with pytest.raises(CacheFull) as excinfo:
        cpu.acquire("c")
    assert excinfo.value.http_status == 429
    assert cpu.pinned() == {"a": 1, "b": 1}  # the refused request left nothing pinned
    assert cpu.resident() == ["a", "b"]
    cpu.acquire("a")  # a second request on an active adapter is fine
    cpu.release("a")
    cpu.release("a")
    cpu.acquire("c")  # a is free now: it goes
    assert cpu.resident() == ["b", "c"]


def test_prefetch_never_evicts_a_pinned_adapter() -> None:
    cpu, _ = make_cpu(1)
    cpu.acquire("a")
    assert cpu.prefetch("b") is False
    assert cpu.resident() == ["a"]
    cpu.release("a")
    assert cpu.prefetch("b") is True
    assert cpu.resident() == ["b"]
    assert cpu.stats.misses == 1  # prefetches are not request misses


def test_concurrent_cold_requests_load_an_adapter_once() -> None:
    cpu, loaded = make_cpu(4)
    threads = [threading.Thread(target=cpu.acquire, args=("a",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loaded == ["a"]
    assert cpu.pinned() == {"a": 8}


def test_cpu_cache_refuses_an_invalid_adapter_without_caching_or_pinning() -> None:
    def loader(name: str) -> object:
        return random_adapter(SPEC, rank=16)  # above max_rank=8

    cpu = CpuCache(2, validated(loader))
    with pytest.raises(AdapterInvalid) as excinfo:
        cpu.acquire("big")
    assert excinfo.value.code == "rank_too_large"
    assert "NIM_MAX_LORA_RANK=8" in str(excinfo.value)
    assert cpu.resident() == [] and cpu.pinned() == {}


@pytest.mark.parametrize(
    ("adapter", "code"),
    [
        (random_adapter(SPEC, rank=16), "rank_too_large"),
        (random_adapter(tiny_spec(hidden_size=32, intermediate_size=64), rank=2), "shape_mismatch"),
        (random_adapter(SPEC, rank=2, layers=SPEC.num_layers + 1), "shape_mismatch"),
    ],
    ids=["rank", "other-base-model", "layer-count"],
)
def test_check_adapter_refuses_what_does_not_fit(adapter: object, code: str) -> None:
    with pytest.raises(AdapterInvalid) as excinfo:
        validate_adapter(adapter, SPEC, LIMITS)
    assert excinfo.value.code == code


def test_gpu_slots_are_lru_and_pinned_slots_block() -> None:
    slots, weights = make_slots(2)
    a, b, c = (random_adapter(SPEC, rank=2, seed=s) for s in (1, 2, 3))
    assert slots.acquire("a", a) == 0
    assert slots.acquire("b", b) == 1
    assert slots.acquire("c", c) is None  # both pinned: c waits
    slots.release("a", 0)
    assert slots.acquire("b", b) == 1  # hit
    slots.release("b", 1)
    slots.release("b", 1)
    assert slots.acquire("c", c) == 0  # a was least recently used
    assert slots.resident() == {"b": 1, "c": 0}
    assert weights.slot_rank == [2, 2]
    assert (slots.stats.hits, slots.stats.loads, slots.stats.evictions) == (1, 3, 1)
    expected = c.weights[(0, "q_proj")][0]
    assert torch.equal(weights.A[(0, "q_proj")][0, :2], expected)


def test_gpu_refuses_wrong_rank_or_shape_and_leaves_the_slot_empty() -> None:
    slots, weights = make_slots(2, max_rank=4)
    with pytest.raises(AdapterInvalid) as excinfo:
        slots.acquire("big", random_adapter(SPEC, rank=8))
    assert excinfo.value.code == "rank_too_large"
    other = random_adapter(tiny_spec(hidden_size=32, intermediate_size=64), rank=2)
    with pytest.raises(AdapterInvalid) as excinfo:
        slots.acquire("other", other)
    assert excinfo.value.code == "shape_mismatch"
    assert slots.resident() == {}
    assert slot_is_empty(weights, 0) and slot_is_empty(weights, 1)
    assert slots.acquire("ok", random_adapter(SPEC, rank=4)) == 0  # slots still usable


def test_gpu_evict_while_running_clears_the_slot_on_last_release() -> None:
    slots, weights = make_slots(2)
    slots.acquire("a", random_adapter(SPEC, rank=2))
    assert slots.evict("a") is True
    assert not slot_is_empty(weights, 0)  # a running request still uses it
    slots.release("a", 0)
    assert slot_is_empty(weights, 0)
    assert slots.resident() == {}


def test_a_changed_adapter_replaces_the_resident_copy() -> None:
    slots, weights = make_slots(2)
    old, new = random_adapter(SPEC, rank=2, seed=1), random_adapter(SPEC, rank=4, seed=2)
    slot = slots.acquire("a", old)
    slots.release("a", slot)
    assert slots.acquire("a", new) == slot
    assert weights.slot_rank[slot] == 4
