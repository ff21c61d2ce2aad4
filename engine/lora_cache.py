"""Adapter residency, as in NIM: a CPU cache of canonical adapters and GPU slots.

Both levels are LRU; an adapter in use by a running request is pinned and never evicted.
Adapters the registry pins (issue 13) are *kept*: resident and never LRU-evicted at either
level (an explicit ``evict``, when the adapter stops being servable, still drops them).
The CPU cache's capacity bounds the number of distinct adapters among all active requests:
one more gives ``CacheFull`` (the server answers HTTP 429). Whether an adapter fits this
engine is decided before it gets here (``store.formats.validate_adapter``, when the PEFT
source parses it); ``LoraWeights.load_slot`` only guards its buffers' capacity, refusing
with ``AdapterInvalid`` before anything is copied, so a slot is never half-loaded.

The cache knows nothing about HTTP or the model's math: it calls a ``loader`` to fetch an
adapter from the PEFT source and ``LoraWeights.load_slot`` / ``clear_slot`` for the GPU.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from store.errors import LorafleetError

log = structlog.get_logger(__name__)


class CacheFull(LorafleetError):
    """More distinct adapters are active than the CPU cache holds (NIM answers 429)."""

    code = "lora_cache_full"
    http_status = 429


class UnknownAdapter(LorafleetError):
    """The adapter is not (or no longer) servable on this engine."""

    code = "model_not_found"
    http_status = 404


class SlotStore(Protocol):
    """What the GPU level needs from ``engine.lora.LoraWeights``."""

    def load_slot(self, slot: int, adapter: object) -> None: ...
    def clear_slot(self, slot: int) -> None: ...


@dataclass
class LevelStats:
    """Counters of one cache level; monotonically increasing."""

    hits: int = 0
    misses: int = 0
    loads: int = 0
    evictions: int = 0
    load_seconds: float = 0.0


class CpuCache:
    """LRU of up to ``capacity`` canonical adapters in host memory, keyed by served name.

    ``acquire`` pins (and loads on a miss); ``release`` unpins. Distinct pinned names never
    exceed ``capacity``, so room for a pinned adapter can always be made by evicting an
    unpinned one.
    """

    def __init__(self, capacity: int, loader: Callable[[str], object]) -> None:
        self.capacity = capacity
        self._loader = loader
        self._entries: OrderedDict[str, object] = OrderedDict()
        self._pins: Counter[str] = Counter()
        self._lock = threading.Lock()
        # One load at a time: two requests for the same cold adapter load it once.
        self._load_lock = threading.Lock()
        self._kept: frozenset[str] = frozenset()
        self.stats = LevelStats()

    def keep(self, names: frozenset[str]) -> None:
        """Never LRU-evict ``names`` (at most ``capacity - 1``, so one slot always turns
        over; the caller decides which)."""
        with self._lock:
            self._kept = frozenset(names)

    def kept(self) -> frozenset[str]:
        with self._lock:
            return self._kept

    def acquire(self, name: str) -> object:
        """Pin ``name`` and return its adapter, loading it from the source on a miss.

        Raises ``CacheFull`` when pinning would make more than ``capacity`` distinct adapters
        active, ``UnknownAdapter`` / ``AdapterInvalid`` from the loader; nothing stays
        pinned when it raises.
        """
        with self._lock:
            if self._pins[name] == 0 and self._active_count() >= self.capacity:
                raise CacheFull(
                    f"{self._active_count()} distinct LoRA adapters are active and the CPU "
                    f"cache holds {self.capacity} (NIM_MAX_CPU_LORAS); retry later or use "
                    f"fewer adapters at once"
                )
            self._pins[name] += 1
        try:
            return self._get_or_load(name, count=True)
        except BaseException:
            self.release(name)
            raise

    def release(self, name: str) -> None:
        """Unpin one use of ``name`` (it stays cached until LRU-evicted)."""
        with self._lock:
            self._pins[name] -= 1
            if self._pins[name] <= 0:
                del self._pins[name]

    def prefetch(self, name: str) -> bool:
        """Load ``name`` into the cache without pinning it, if room can be made.

        Returns True when it is resident afterwards. Never evicts a pinned adapter.
        """
        with self._lock:
            if name in self._entries:
                return True
            if self._unpinned_room() <= 0:
                return False
        self._get_or_load(name, count=False)
        return True

    def evict(self, name: str) -> bool:
        """Drop ``name`` from the cache (in-flight requests keep their reference)."""
        with self._lock:
            if self._entries.pop(name, None) is None:
                return False
            self.stats.evictions += 1
        log.info("lora_evicted", adapter=name, level="cpu", reason="requested")
        return True

    def resident(self) -> list[str]:
        """Cached names, least recently used first."""
        with self._lock:
            return list(self._entries)

    def pinned(self) -> dict[str, int]:
        """Active use counts per adapter."""
        with self._lock:
            return dict(self._pins)

    def _active_count(self) -> int:
        return sum(1 for v in self._pins.values() if v > 0)

    def _unpinned_room(self) -> int:
        free = self.capacity - len(self._entries)
        evictable = sum(1 for n in self._entries if self._pins[n] == 0 and n not in self._kept)
        return free + evictable

    def _get_or_load(self, name: str, *, count: bool) -> object:
        with self._lock:
            if name in self._entries:
                self._entries.move_to_end(name)
                if count:
                    self.stats.hits += 1
                return self._entries[name]
        with self._load_lock:
            with self._lock:
                if name in self._entries:  # loaded by another thread meanwhile
                    self._entries.move_to_end(name)
                    if count:
                        self.stats.hits += 1
                    return self._entries[name]
                if count:
                    self.stats.misses += 1
            started = time.perf_counter()
            adapter = self._loader(name)
            elapsed = time.perf_counter() - started
            with self._lock:
                self._entries[name] = adapter
                self.stats.loads += 1
                self.stats.load_seconds += elapsed
                self._evict_over_capacity()
        log.info("lora_loaded", adapter=name, level="cpu", seconds=round(elapsed, 4))
        return adapter

    def _evict_over_capacity(self) -> None:
        for victim in list(self._entries):
            if len(self._entries) <= self.capacity:
                return
            if self._pins[victim] == 0 and victim not in self._kept:
                del self._entries[victim]
                self.stats.evictions += 1
                log.info("lora_evicted", adapter=victim, level="cpu", reason="lru")


@dataclass
class _Slot:
    name: str
    adapter: object
    pins: int = 0
    doomed: bool = False  # evicted while in use: cleared on last release


class GpuSlots:
    """LRU assignment of adapters to the ``n_slots`` slots of a ``LoraWeights``.

    ``acquire`` returns a pinned slot (loading the adapter into a free or least recently used
    unpinned slot) or None when every slot is pinned: at most ``n_slots`` distinct adapters
    can run in one step.
    """

    def __init__(self, weights: SlotStore, n_slots: int) -> None:
        self.weights = weights
        self.n_slots = n_slots
        self._slots: OrderedDict[int, _Slot] = OrderedDict()  # LRU order over used slots
        self._by_name: dict[str, int] = {}
        self._lock = threading.Lock()
        self._kept: frozenset[str] = frozenset()
        self.stats = LevelStats()

    def keep(self, names: frozenset[str]) -> None:
        """Never LRU-evict the slots of ``names`` (at most ``n_slots - 1``, so one slot
        always turns over for the other adapters)."""
        with self._lock:
            self._kept = frozenset(names)

    def kept(self) -> frozenset[str]:
        with self._lock:
            return self._kept

    def acquire(self, name: str, adapter: object) -> int | None:
        """Pin ``name`` in a slot and return the slot index, or None when all are pinned.

        A different adapter object under the same name (the source changed) replaces the
        resident copy once it is unpinned. ``AdapterInvalid`` from ``load_slot`` leaves the
        slot cleared and free.
        """
        with self._lock:
            slot = self._by_name.get(name)
            if slot is not None:
                entry = self._slots[slot]
                if entry.adapter is adapter and not entry.doomed:
                    entry.pins += 1
                    self._slots.move_to_end(slot)
                    self.stats.hits += 1
                    return slot
                if entry.pins == 0:
                    self._drop(slot, reason="replaced")
                else:
                    return None  # the old copy is still running; wait for it to drain
            target = self._free_slot()
            if target is None:
                return None
            self.stats.misses += 1
            started = time.perf_counter()
            try:
                self.weights.load_slot(target, adapter)
            except BaseException:
                self.weights.clear_slot(target)  # never leave a half-loaded slot behind
                raise
            elapsed = time.perf_counter() - started
            self._slots[target] = _Slot(name, adapter, pins=1)
            self._by_name[name] = target
            self.stats.loads += 1
            self.stats.load_seconds += elapsed
        log.debug("lora_loaded", adapter=name, level="gpu", slot=target, seconds=round(elapsed, 5))
        return target

    def release(self, name: str, slot: int) -> None:
        """Unpin one use of ``slot``; a slot evicted while in use is cleared now."""
        with self._lock:
            entry = self._slots.get(slot)
            if entry is None or entry.name != name:
                return
            entry.pins -= 1
            if entry.pins <= 0 and entry.doomed:
                self._drop(slot, reason="requested")

    def evict(self, name: str) -> bool:
        """Remove ``name`` from the GPU now, or as soon as its running requests finish."""
        with self._lock:
            slot = self._by_name.get(name)
            if slot is None:
                return False
            entry = self._slots[slot]
            if entry.pins > 0:
                entry.doomed = True
            else:
                self._drop(slot, reason="requested")
            return True

    def resident(self) -> dict[str, int]:
        """``name -> slot`` of every loaded adapter."""
        with self._lock:
            return dict(self._by_name)

    def _free_slot(self) -> int | None:
        used = set(self._slots)
        for slot in range(self.n_slots):
            if slot not in used:
                return slot
        for slot, entry in self._slots.items():  # least recently used first
            if entry.pins == 0 and entry.name not in self._kept:
                self._drop(slot, reason="lru")
                return slot
        return None

    def _drop(self, slot: int, *, reason: str) -> None:
        entry = self._slots.pop(slot)
        if self._by_name.get(entry.name) == slot:
            del self._by_name[entry.name]
        self.weights.clear_slot(slot)
        self.stats.evictions += 1
        log.debug("lora_evicted", adapter=entry.name, level="gpu", slot=slot, reason=reason)


@dataclass
class AdapterCache:
    """The two levels together, as the scheduler and the refresh reconciler see them."""

    cpu: CpuCache
    gpu: GpuSlots

    def evict(self, name: str) -> None:
        """Remove ``name`` from both levels (running requests finish with their copy)."""
        self.cpu.evict(name)
        self.gpu.evict(name)

    def keep(self, pinned: frozenset[str]) -> None:
        """Keep ``pinned`` resident: the first ``gpu.n_slots - 1`` (by name) in GPU slots
        once loaded there, up to ``cpu.capacity - 1`` in the CPU cache; one slot of each
        level always turns over for the other adapters. Those beyond are reported by
        ``pins``, never dropped silently."""
        names = sorted(pinned)
        self.gpu.keep(frozenset(names[: max(self.gpu.n_slots - 1, 0)]))
        self.cpu.keep(frozenset(names[: max(self.cpu.capacity - 1, 0)]))

    def preload_gpu(self) -> list[str]:
        """Load the GPU-kept adapters that are in the CPU cache into slots. Only before the
        scheduler runs (the scheduler thread alone writes slots once it does); returns the
        names loaded."""
        loaded = []
        for name in sorted(self.gpu.kept()):
            if name in self.gpu.resident() or name not in self.cpu.resident():
                continue
            adapter = self.cpu.acquire(name)
            try:
                slot = self.gpu.acquire(name, adapter)
                if slot is not None:
                    self.gpu.release(name, slot)
                    loaded.append(name)
            finally:
                self.cpu.release(name)
        return loaded

    def pins(self, pinned: frozenset[str]) -> dict[str, list[str]]:
        """Where the ``pinned`` adapters are: ``gpu`` (in a slot), ``cpu`` (in the CPU
        cache only), ``not_resident`` (beyond both levels' room, or not loaded yet)."""
        residency = self.residency()
        report: dict[str, list[str]] = {"gpu": [], "cpu": [], "not_resident": []}
        for name in sorted(pinned):
            levels = residency.get(name, set())
            level = "gpu" if "gpu" in levels else "cpu" if "cpu" in levels else "not_resident"
            report[level].append(name)
        return report

    def residency(self) -> dict[str, set[str]]:
        """``adapter -> {"cpu", "gpu"}`` levels it is resident in."""
        levels: dict[str, set[str]] = {}
        for name in self.cpu.resident():
            levels.setdefault(name, set()).add("cpu")
        for name in self.gpu.resident():
            levels.setdefault(name, set()).add("gpu")
        return levels
