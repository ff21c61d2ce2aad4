"""Keeping the served adapter set in step with the PEFT source.

The source (registry ready set + generation, or the local directory) is the truth; events
on ``lorafleet:fleet:refresh`` are hints that make the engine look sooner. The engine
reconciles at start, after every event for its base model, and every
``NIM_PEFT_REFRESH_INTERVAL`` seconds, so an engine that missed events converges by itself.

One reconciliation applies a listing in an order that never shows a request a half-made
switch: new and changed adapters are served first, then every explicit alias's targets (an
implicit ``@latest``'s when it switches) and every pinned adapter are loaded into the CPU
cache (and pins are kept there), then the alias table is
swapped whole, then adapters that left are removed, and only then does
``catalog.generation`` (what health and the heartbeat report) move. So once an engine
reports a generation, every alias at it routes to adapters already in memory: a switch
gives neither a 404 nor a cold load on the request path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from engine.aliases import targets_of
from engine.lora_cache import AdapterCache
from engine.source import AdapterEntry, Catalog, Listing, PeftSource
from events.models import FleetRefresh
from store.errors import AdapterInvalid

log = structlog.get_logger(__name__)


@dataclass
class ReconcileResult:
    """What one reconciliation changed."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)  # aliases added, changed or gone
    prefetched: list[str] = field(default_factory=list)  # alias targets / pins loaded now
    generation: int | None = None
    ok: bool = True
    error: str | None = None


class Reconciler:
    """Makes the ``Catalog`` (and the caches) equal to the source's current listing. ``fit``
    raises ``AdapterInvalid`` for a listed entry this engine cannot serve (rank, base model):
    such an entry is recorded as refused, never served."""

    def __init__(
        self,
        source: PeftSource,
        catalog: Catalog,
        cache: AdapterCache | None,
        fit: Callable[[AdapterEntry], None] | None = None,
    ) -> None:
        self.source = source
        self.catalog = catalog
        self.cache = cache
        self.fit = fit
        self._lock = threading.Lock()  # one reconciliation at a time
        self.reconciliations = 0
        self.failures = 0
        self.last_error: str | None = None

    @property
    def synced(self) -> bool:
        """True once a reconciliation has succeeded."""
        return self.reconciliations > 0

    def reconcile(self) -> ReconcileResult:
        """List the source and apply the difference. A source that cannot be reached leaves
        the catalog as it was (``ok=False``): serving what we have beats serving nothing."""
        with self._lock:
            try:
                listing = self.source.list()
            except Exception as exc:  # registry down, network, 401: try again next time
                self.failures += 1
                self.last_error = str(exc)
                log.warning("reconcile_failed", error=str(exc))
                return ReconcileResult(ok=False, error=str(exc))
            result = ReconcileResult(generation=listing.generation)
            known = set(self.catalog.names()) | set(self.catalog.refusals())
            for entry in listing.entries.values():
                self._apply(entry, result)
            self._warm(listing, result)
            self._swap_aliases(listing, result)
            for name in known - set(listing.entries):  # no alias routes to them any more
                self.catalog.remove(name)
                self._evict(name)
                result.removed.append(name)
            self.catalog.generation = listing.generation
            self.reconciliations += 1
            self.last_error = None
        if result.added or result.removed or result.changed or result.refused or result.aliases:
            log.info(
                "reconciled",
                added=result.added,
                removed=result.removed,
                changed=result.changed,
                refused=result.refused,
                aliases=result.aliases,
                prefetched=result.prefetched,
                generation=result.generation,
            )
        return result

    def _warm(self, listing: Listing, result: ReconcileResult) -> None:
        """Keep the pinned adapters and load every alias target and pin into the CPU cache
        (before the alias table that routes to them is swapped in). A target that cannot be
        loaded is logged; a request for it gets the same answer a cold request would."""
        self.catalog.pinned = frozenset(n for n in listing.pinned if n in self.catalog)
        if self.cache is None:
            return
        self.cache.keep(self.catalog.pinned)
        # Explicit aliases' targets always; an implicit @latest's only when it switches
        # (else every adapter's newest version would fill the cache at start).
        routed = self.catalog.aliases()
        switching = [
            alias
            for name, alias in listing.aliases.items()
            if not alias.implicit or (name in routed and routed[name] != alias)
        ]
        wanted = self.catalog.pinned | targets_of(switching)
        resident = set(self.cache.cpu.resident())
        for name in sorted(wanted - resident):
            if name not in self.catalog:
                continue  # refused: its requests get the reason
            try:
                if self.cache.cpu.prefetch(name):
                    result.prefetched.append(name)
                else:
                    log.warning("prefetch_no_room", adapter=name)
            except Exception as exc:  # a broken adapter is refused again when requested
                log.warning("prefetch_failed", adapter=name, error=str(exc))

    def _swap_aliases(self, listing: Listing, result: ReconcileResult) -> None:
        old = self.catalog.aliases()
        for name in sorted(set(old) | set(listing.aliases)):
            if old.get(name) != listing.aliases.get(name):
                result.aliases.append(name)
        self.catalog.set_aliases(listing.aliases)

    def _apply(self, entry: AdapterEntry, result: ReconcileResult) -> None:
        """Serve, re-serve or refuse one listed entry. A refusal stands until the entry's
        fingerprint changes (same bytes, same verdict)."""
        refused = self.catalog.refusals().get(entry.name)
        if refused is not None and refused.entry.fingerprint == entry.fingerprint:
            return
        try:
            if self.fit is not None:
                self.fit(entry)
        except AdapterInvalid as exc:
            self.catalog.refuse(entry, exc.code, exc.message)
            self._evict(entry.name)
            result.refused.append(entry.name)
            log.warning("adapter_unservable", adapter=entry.name, code=exc.code, reason=exc.message)
            return
        old = self.catalog.put(entry)
        if old is None:
            result.added.append(entry.name)
        elif old.fingerprint != entry.fingerprint:
            self._evict(entry.name)  # the bytes changed: reload on next use
            result.changed.append(entry.name)

    def apply_event(self, event: FleetRefresh) -> None:
        """Act on a refresh hint, then reconcile. ``evict`` stops serving at once (before the
        source is asked); ``load`` prefetches the adapter into the CPU cache.

        An event at or below the generation the catalog already holds is stale: the listing
        that moved the catalog there included its change (and anything later, such as the
        same adapter served again), so it is neither re-applied nor re-listed. A burst of
        N events therefore costs about one listing, not N, and a backlog of old events never
        evicts what a newer listing serves."""
        current = self.catalog.generation
        stale = current is not None and event.generation <= current
        log.info(
            "refresh_event",
            action=event.action,
            adapter=event.adapter,
            generation=event.generation,
            event_id=event.event_id,
            stale=stale,
        )
        if not stale:
            if event.action == "evict":
                self.catalog.remove(event.adapter)
                self._evict(event.adapter)
            self.reconcile()
        if event.action == "load" and self.cache is not None and event.adapter in self.catalog:
            try:
                self.cache.cpu.prefetch(event.adapter)
            except Exception as exc:  # a broken adapter is refused again when requested
                log.warning("prefetch_failed", adapter=event.adapter, error=str(exc))

    def run_periodic(self, interval: float, stop: threading.Event) -> None:
        """Reconcile every ``interval`` seconds until ``stop`` is set."""
        while not stop.wait(interval):
            self.reconcile()

    def _evict(self, name: str) -> None:
        if self.cache is not None:
            self.cache.evict(name)
