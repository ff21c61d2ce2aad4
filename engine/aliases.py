"""Aliases at the engine: ``namespace/name@alias`` (and the bare ``namespace/name``, which is
``@latest``) resolved per request to one of its targets.

The registry lists every alias of this engine's base model in its fleet view (with the
implicit ``latest``: the highest ready version); the reconciler swaps the whole table at
once, after every target is in the CPU cache (``engine/refresh.py``). A request without a
route key picks a target at random by weight. With a key (the OpenAI ``user`` field, or the
``x-lorafleet-route-key`` header) the pick is sticky: weighted rendezvous hashing, where
each target scores ``-ln(u) / weight`` with ``u`` drawn from ``sha256(key|alias|version)``
and the lowest score wins. Target *i* wins with probability ``w_i / sum(w)``; the score
depends on nothing but the key, the alias, the version and its weight, so every engine and
every restart picks the same target, and changing weights moves only the keys whose
winner changed (with two arms: exactly the share that moved, all in one direction).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

ROUTE_KEY_HEADER = "x-lorafleet-route-key"
SERVED_MODEL_HEADER = "x-lorafleet-served-model"
LATEST = "latest"
_TWO_64 = float(2**64)


@dataclass(frozen=True)
class Target:
    """One arm: the served coordinates (``namespace/name@version``) and its weight."""

    name: str
    weight: int

    @property
    def version(self) -> str:
        return self.name.rpartition("@")[2]


@dataclass(frozen=True)
class Alias:
    """``namespace/name@alias`` and its targets (weights > 0) at one revision."""

    name: str
    targets: tuple[Target, ...]
    pinned: bool = False
    implicit: bool = False
    revision: int = 0
    generation: int | None = None


@dataclass(frozen=True)
class Resolution:
    """What a request's ``model`` resolved to: the coordinates to serve (None: the base
    model) and the alias it named (None: exact coordinates or the base model)."""

    served: str | None
    alias: str | None = None


def route_score(key: str, alias: str, version: str, weight: int) -> float:
    """``-ln(u) / weight`` with ``u`` in (0, 1) from ``sha256(key|alias|version)``: the
    same on every process (never Python's salted ``hash``)."""
    digest = hashlib.sha256(f"{key}|{alias}|{version}".encode()).digest()
    u = (int.from_bytes(digest[:8], "big") + 0.5) / _TWO_64
    return -math.log(u) / weight


def sticky_pick(alias: Alias, key: str) -> Target:
    """The target ``key`` is routed to: the lowest rendezvous score (ties by name)."""
    return min(
        alias.targets,
        key=lambda t: (route_score(key, alias.name, t.version, t.weight), t.name),
    )


def weighted_pick(alias: Alias, rng: random.Random | None = None) -> Target:
    """A target drawn at random with probability ``weight / sum(weights)``."""
    targets = alias.targets
    if len(targets) == 1:
        return targets[0]
    draw = (rng or _RNG).random() * sum(t.weight for t in targets)
    for target in targets:
        draw -= target.weight
        if draw < 0:
            return target
    return targets[-1]


def pick(alias: Alias, key: str | None) -> Target:
    """Sticky with a route key, weighted at random without one."""
    return sticky_pick(alias, key) if key else weighted_pick(alias)


def alias_name(model: str) -> str | None:
    """The alias ``model`` names: ``ns/name@alias`` as is, the bare ``ns/name`` as
    ``ns/name@latest``; None for a name without a namespace (the base model, a local
    directory's adapter)."""
    namespace, slash, rest = model.partition("/")
    if not slash or not namespace or not rest:
        return None
    return model if "@" in rest else f"{model}@{LATEST}"


def targets_of(aliases: Iterable[Alias]) -> set[str]:
    """Every served name some alias routes to."""
    return {t.name for a in aliases for t in a.targets}


_RNG = random.Random()
