"""Alias routing at the engine, without a server: the sticky hash is the same in every
process, splits keys by weight, never moves a key while weights stand and moves only the
share that changed; the weighted draw follows the weights; the catalog resolves exact
coordinates, aliases and the bare ``ns/name`` (= ``@latest``); pinned adapters survive an
LRU storm in both cache levels."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import pytest
from support.factories import random_adapter
from support.tiny import tiny_spec

from engine.aliases import (
    Alias,
    Target,
    alias_name,
    route_score,
    sticky_pick,
    weighted_pick,
)
from engine.lora import LoraWeights
from engine.lora_cache import AdapterCache, CpuCache, GpuSlots, UnknownAdapter
from engine.source import AdapterEntry, Catalog

OLD, NEW = "acme/bot@1.0.0", "acme/bot@1.1.0"
KEYS = [f"user-{i}" for i in range(20_000)]


def _split(old: int, new: int, name: str = "acme/bot@stable") -> Alias:
    return Alias(name, (Target(OLD, old), Target(NEW, new)))


def _within_binomial(hits: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_the_sticky_pick_is_the_same_in_another_process_with_another_hash_seed() -> None:
    alias = _split(70, 30)
    here = [sticky_pick(alias, k).name for k in KEYS[:500]]
    code = (
        "import json, sys\n"
        "from engine.aliases import Alias, Target, sticky_pick\n"
        f"a = Alias('acme/bot@stable', (Target({OLD!r}, 70), Target({NEW!r}, 30)))\n"
        f"print(json.dumps([sticky_pick(a, f'user-{{i}}').name for i in range(500)]))\n"
    )
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        assert json.loads(out.stdout) == here


def test_route_score_is_sha256_of_key_alias_and_version() -> None:
    import hashlib

    digest = hashlib.sha256(b"k|acme/bot@stable|1.0.0").digest()
    u = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64
    assert route_score("k", "acme/bot@stable", "1.0.0", 4) == -math.log(u) / 4


@pytest.mark.parametrize(("old", "new"), [(90, 10), (50, 50), (1, 99)])
def test_sticky_keys_split_by_weight(old: int, new: int) -> None:
    alias = _split(old, new)
    on_new = sum(sticky_pick(alias, k).name == NEW for k in KEYS)
    assert _within_binomial(on_new, len(KEYS), new / (old + new)), on_new


def test_an_alias_name_is_part_of_the_hash() -> None:
    a, b = _split(50, 50, "acme/bot@stable"), _split(50, 50, "acme/bot@canary")
    same = sum(sticky_pick(a, k).name == sticky_pick(b, k).name for k in KEYS)
    assert _within_binomial(same, len(KEYS), 0.5), same  # independent, not identical


def test_keys_never_move_while_weights_stand_and_move_one_way_by_the_changed_share() -> None:
    before = {k: sticky_pick(_split(90, 10), k).name for k in KEYS}
    again = {k: sticky_pick(_split(90, 10), k).name for k in KEYS}
    assert again == before
    after = {k: sticky_pick(_split(50, 50), k).name for k in KEYS}
    moved = [k for k in KEYS if after[k] != before[k]]
    assert all(before[k] == OLD and after[k] == NEW for k in moved)  # only toward the gain
    assert _within_binomial(len(moved), len(KEYS), 0.4), len(moved)
    back = {k: sticky_pick(_split(90, 10), k).name for k in KEYS}
    assert back == before  # the same weights give the same routes again


def test_a_new_target_only_takes_keys_it_wins() -> None:
    third = "acme/bot@1.2.0"
    two = _split(50, 50)
    three = Alias(two.name, (*two.targets, Target(third, 25)))  # 40/40/20
    before = {k: sticky_pick(two, k).name for k in KEYS}
    after = {k: sticky_pick(three, k).name for k in KEYS}
    moved = [k for k in KEYS if after[k] != before[k]]
    assert all(after[k] == third for k in moved)
    assert _within_binomial(len(moved), len(KEYS), 0.2), len(moved)


def test_the_weighted_draw_follows_the_weights() -> None:
    rng = random.Random(7)
    alias = _split(90, 10)
    n = 20_000
    on_new = sum(weighted_pick(alias, rng).name == NEW for _ in range(n))
    assert _within_binomial(on_new, n, 0.1), on_new
    assert weighted_pick(Alias("a/b@c", (Target(OLD, 100),))).name == OLD


def test_alias_names() -> None:
    assert alias_name("acme/bot@stable") == "acme/bot@stable"
    assert alias_name("acme/bot") == "acme/bot@latest"
    assert alias_name("tiny-llama") is None and alias_name("math") is None


def test_the_catalog_resolves_coordinates_aliases_and_latest() -> None:
    catalog = Catalog()
    for name in (OLD, NEW):
        catalog.put(AdapterEntry(name, fingerprint=name))
    stable = _split(50, 50)
    latest = Alias("acme/bot@latest", (Target(NEW, 100),), implicit=True)
    catalog.set_aliases({stable.name: stable, latest.name: latest})
    assert catalog.resolve(OLD).served == OLD and catalog.resolve(OLD).alias is None
    assert catalog.resolve("acme/bot").served == NEW
    assert catalog.resolve("acme/bot").alias == "acme/bot@latest"
    picked = catalog.resolve("acme/bot@stable", "user-1")
    assert picked.alias == "acme/bot@stable"
    assert picked.served == sticky_pick(stable, "user-1").name
    served = {catalog.resolve("acme/bot@stable").served for _ in range(200)}
    assert served == {OLD, NEW}
    for missing in ("acme/bot@canary", "acme/other", "acme/bot@9.9.9"):
        with pytest.raises(UnknownAdapter, match="does not exist"):
            catalog.resolve(missing)


def test_pinned_adapters_survive_an_lru_storm_at_both_levels() -> None:
    loads: list[str] = []
    spec = tiny_spec()

    def loader(name: str) -> object:
        loads.append(name)
        return random_adapter(spec, rank=2, seed=len(loads))

    weights = LoraWeights(spec.module_shapes(), spec.num_layers, 3, 8)
    cache = AdapterCache(CpuCache(4, loader), GpuSlots(weights, 3))
    pinned = frozenset({"p1", "p2", "p3", "p4"})  # more than either level keeps
    cache.keep(pinned)
    for name in sorted(pinned):
        cache.cpu.prefetch(name)
    assert cache.preload_gpu() == ["p1", "p2"]  # GPU slots - 1
    assert set(cache.cpu.kept()) == {"p1", "p2", "p3"}  # CPU capacity - 1
    for i in range(40):  # a storm of other adapters through one free slot of each level
        name = f"storm-{i}"
        adapter = cache.cpu.acquire(name)
        slot = cache.gpu.acquire(name, adapter)
        assert slot is not None
        cache.gpu.release(name, slot)
        cache.cpu.release(name)
    assert {"p1", "p2"} <= set(cache.gpu.resident())
    assert {"p1", "p2", "p3"} <= set(cache.cpu.resident())
    assert cache.pins(pinned) == {"gpu": ["p1", "p2"], "cpu": ["p3"], "not_resident": ["p4"]}
    assert loads.count("p1") == loads.count("p2") == loads.count("p3") == 1
    cache.evict("p1")  # unservable now: an explicit eviction still drops a pin
    assert "p1" not in cache.cpu.resident() and "p1" not in cache.gpu.resident()
