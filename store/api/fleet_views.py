"""The rendered ``GET /v1/fleet`` answers of one API process, per generation.

Every engine polls the fleet view (and asks for it again on each refresh event); with
thousands of ready versions one answer costs hundreds of milliseconds of listing and
validation, and it is the same bytes until the fleet generation moves (every change of
serving state bumps it: ``store.outbox``). So an answer is rendered once per (base model,
namespaces the caller sees, generation) and kept; a poll at an unchanged generation costs
one single-row read. An answer is kept only when the generation read after the listing is
still the one it started at, so what is kept is exactly that generation's state.

One render per key at a time: every engine of a base model asks at the same moment, right
after the refresh event that moved the generation, and N requests rendering the same
generation side by side cost N times the CPU for one answer (and under a burst of
registrations, when the generation moves many times a second, most of the API's time). A
request that finds a render of its key in flight at its own generation or a later one waits
for that answer instead; one that has seen a later generation than the render in flight
renders itself, so no caller is answered a state older than the generation it read.
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


class _Flight:
    """A render in progress: the generation it started at and, once done, its answer
    (``None`` when it failed)."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.done = threading.Event()
        self.body: bytes | None = None


class FleetViews:
    """A small LRU of rendered fleet answers; safe across the API's request threads.
    ``renders`` counts the listings made, ``waiting`` the requests waiting for one now."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[Key, tuple[int, bytes]] = OrderedDict()
        self._flights: dict[Key, _Flight] = {}
        self.renders = 0
        self.waiting = 0

    def render(self, session: Session, base_model: str, visible: set[str] | None) -> bytes:
        """The JSON body of ``GET /v1/fleet?base_model=...`` for a caller who sees
        ``visible`` namespaces (None: all) at the committed generation (or a later one)."""
        key: Key = (base_model, None if visible is None else frozenset(visible))
        generation = current_generation(session)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == generation:
                self._entries.move_to_end(key)
                return entry[1]
            flight = self._flights.get(key)
            lead = flight is None or flight.generation < generation
            if lead:
                flight = self._flights[key] = _Flight(generation)
            else:
                self.waiting += 1
        if lead:
            try:
                flight.body = self._list_and_keep(key, session, base_model, visible, generation)
                return flight.body
            finally:
                with self._lock:
                    if self._flights.get(key) is flight:
                        del self._flights[key]
                flight.done.set()
        try:
            flight.done.wait()
        finally:
            with self._lock:
                self.waiting -= 1
        if flight.body is not None:
            return flight.body
        # The render waited for failed (its own caller got the error): try on our own.
        return self._list_and_keep(key, session, base_model, visible, generation)

    def _list_and_keep(
        self,
        key: Key,
        session: Session,
        base_model: str,
        visible: set[str] | None,
        generation: int,
    ) -> bytes:
        """List and render; keep the answer when it is exactly ``generation``'s state."""
        with self._lock:
            self.renders += 1
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
