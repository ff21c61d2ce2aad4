"""The rendered ``GET /v1/fleet`` answers of one API process, per generation.

Every engine polls the fleet view (and asks for it again on each refresh event); with
thousands of ready versions one answer costs hundreds of milliseconds of listing and
validation, and it is the same bytes until the fleet generation moves (every change of
serving state bumps it: ``store.outbox``). So an answer is rendered once per (base model,
namespaces the caller sees, generation) and kept; a poll at an unchanged generation costs
one single-row read. An answer is kept only when the generation read after the listing is
still the one it started at, so what is kept is exactly that generation's state.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from sqlmodel import Session

from store import catalog
from store.api.schemas.ops import FleetView
from store.outbox import current_generation

Key = tuple[str, frozenset[str] | None]


class FleetViews:
    """A small LRU of rendered fleet answers; safe across the API's request threads."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[Key, tuple[int, bytes]] = OrderedDict()

    def render(self, session: Session, base_model: str, visible: set[str] | None) -> bytes:
        """The JSON body of ``GET /v1/fleet?base_model=...`` for a caller who sees
        ``visible`` namespaces (None: all) at the committed generation."""
        key: Key = (base_model, None if visible is None else frozenset(visible))
        generation = current_generation(session)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == generation:
                self._entries.move_to_end(key)
                return entry[1]
        view = catalog.fleet_state(session, base_model)
        body = _render(view, base_model, visible)
        if view["generation"] == generation == current_generation(session):
            with self._lock:
                self._entries[key] = (generation, body)
                self._entries.move_to_end(key)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return body


def _render(view: dict[str, Any], base_model: str, visible: set[str] | None) -> bytes:
    """A namespace token sees its own namespace's adapters and aliases only."""
    if visible is not None:
        view["adapters"] = [a for a in view["adapters"] if a["namespace"] in visible]
        view["aliases"] = [a for a in view["aliases"] if a["namespace"] in visible]
    view["base_model"] = base_model
    return FleetView.model_validate(view).model_dump_json().encode()
