"""PEFT sources (NIM's ``NIM_PEFT_SOURCE``): where an engine discovers and fetches adapters.

* ``RegistrySource``: the registry's ready set for this engine's base model
  (``GET /v1/fleet``); served names are ``namespace/name@version``, and the fleet view's
  aliases (``namespace/name@alias``, ``engine/aliases.py``) and pins come with it.
* ``LocalDirectorySource``: NIM's layout, one adapter per sub-directory in any of the three
  formats; the served name is the directory name.

A source only lists and fetches; the ``Catalog`` holds what is servable right now (and,
apart, what this engine refused and why) and the refresh reconciler (``engine/refresh.py``)
keeps it in step with the source.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from engine.aliases import Alias, Resolution, Target, alias_name, pick
from engine.lora_cache import UnknownAdapter
from store.errors import AdapterInvalid, LorafleetError
from store.formats import BaseModelSpec, CanonicalAdapter, ValidationLimits, load_adapter
from store.formats.validate import check_rank

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class AdapterEntry:
    """One servable adapter. ``fingerprint`` changes whenever its bytes may have changed."""

    name: str
    fingerprint: str
    adapter_id: str | None = None
    rank: int | None = None
    base_model: str | None = None


@dataclass(frozen=True)
class Listing:
    """A source's view at one moment: its adapters and (registry only) its generation, the
    aliases routing to those adapters and the adapters pinned resident."""

    entries: dict[str, AdapterEntry]
    generation: int | None = None
    aliases: dict[str, Alias] = field(default_factory=dict)
    pinned: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Refusal:
    """An adapter the source offers that this engine cannot serve, with the reason
    (``code`` is the ``AdapterInvalid`` code, e.g. ``rank_too_large``)."""

    entry: AdapterEntry
    code: str
    message: str


class UnservableAdapter(UnknownAdapter):
    """A request for an adapter this engine refused: 404 like an unknown model (it is not in
    ``/v1/models``), with the reason in the message."""


class UnknownBaseModel(LorafleetError):
    """The registry has no base model under this engine's served name: a configuration
    error (``NIM_SERVED_MODEL_NAME``) the engine refuses to start with."""

    code = "unknown_base_model"
    http_status = 404


class SourceUnavailable(LorafleetError):
    """The source could not be listed right now (unreachable, 401/403, 5xx); retried."""

    code = "peft_source_unavailable"
    http_status = 503


class PeftSource(Protocol):
    """What the reconciler and the CPU cache need from a source."""

    def verify(self) -> None: ...
    def list(self) -> Listing: ...
    def fetch(self, entry: AdapterEntry) -> CanonicalAdapter: ...


class Catalog:
    """The adapters this engine serves right now (``/v1/models``) and those it refused,
    thread-safe. A name is in at most one of the two."""

    def __init__(self) -> None:
        self._entries: dict[str, AdapterEntry] = {}
        self._refused: dict[str, Refusal] = {}
        self._aliases: dict[str, Alias] = {}
        self._lock = threading.Lock()
        self.generation: int | None = None
        self.pinned: frozenset[str] = frozenset()

    def resolve(self, model: str, route_key: str | None = None) -> Resolution:
        """What a request for ``model`` serves: exact coordinates as they are; an alias
        (``ns/name@alias``, or the bare ``ns/name`` = ``@latest``) one of its targets, picked
        by weight (sticky with ``route_key``). ``UnknownAdapter`` like ``get`` otherwise."""
        with self._lock:
            exact = model in self._entries
            alias = None if exact else self._aliases.get(alias_name(model) or "")
        if alias is None:
            return Resolution(self.get(model).name)
        return Resolution(pick(alias, route_key).name, alias.name)

    def set_aliases(self, aliases: dict[str, Alias]) -> None:
        """Route by ``aliases`` from now on (the whole table at once)."""
        with self._lock:
            self._aliases = dict(aliases)

    def aliases(self) -> dict[str, Alias]:
        """``name -> Alias`` of every alias routed now."""
        with self._lock:
            return dict(self._aliases)

    def get(self, name: str) -> AdapterEntry:
        """The entry for ``name``; ``UnknownAdapter`` when it is not servable (its subclass
        ``UnservableAdapter``, saying why, when this engine refused it)."""
        with self._lock:
            entry = self._entries.get(name)
            refusal = self._refused.get(name)
        if refusal is not None:
            raise UnservableAdapter(
                f"The model `{name}` cannot be served by this engine: {refusal.message}"
            )
        if entry is None:
            raise UnknownAdapter(f"The model `{name}` does not exist.")
        return entry

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    def names(self) -> list[str]:
        """Servable adapter names, sorted."""
        with self._lock:
            return sorted(self._entries)

    def put(self, entry: AdapterEntry) -> AdapterEntry | None:
        """Serve ``entry`` (clearing any refusal of its name); returns the entry it replaced."""
        with self._lock:
            self._refused.pop(entry.name, None)
            old = self._entries.get(entry.name)
            self._entries[entry.name] = entry
            return old

    def refuse(self, entry: AdapterEntry, code: str, message: str) -> None:
        """Stop serving ``entry.name`` and record why this engine cannot."""
        with self._lock:
            self._entries.pop(entry.name, None)
            self._refused[entry.name] = Refusal(entry, code, message)

    def refusals(self) -> dict[str, Refusal]:
        """``name -> Refusal`` of every adapter the source offers and this engine refused."""
        with self._lock:
            return dict(self._refused)

    def remove(self, name: str) -> AdapterEntry | None:
        """Forget ``name`` (served or refused); returns the removed served entry."""
        with self._lock:
            self._refused.pop(name, None)
            return self._entries.pop(name, None)


def check_entry(entry: AdapterEntry, served: str, limits: ValidationLimits) -> None:
    """Raise ``AdapterInvalid`` when what the source lists about ``entry`` (its base model and
    rank, before any download) already shows this engine cannot serve it. The rank is judged
    by ``store.formats``' own rule; the full fit is ``validate_adapter``, run on fetch."""
    if entry.base_model is not None and entry.base_model != served:
        raise AdapterInvalid(
            "unknown_base_model",
            f"adapter is for base model {entry.base_model!r}, this engine serves {served!r}",
        )
    if entry.rank is not None:
        check_rank(entry.rank, limits, "registry listing")


def catalog_loader(catalog: Catalog, source: PeftSource) -> Callable[[str], CanonicalAdapter]:
    """The CPU cache's loader: fetch ``name`` from ``source`` (which parses and validates it
    against this engine's base model and limits). An ``AdapterInvalid`` marks it refused in
    the catalog (until its fingerprint changes) and raises ``UnservableAdapter``."""

    def load(name: str) -> CanonicalAdapter:
        entry = catalog.get(name)
        try:
            adapter = source.fetch(entry)
        except AdapterInvalid as exc:
            catalog.refuse(entry, exc.code, exc.message)
            log.warning("adapter_unservable", adapter=name, code=exc.code, reason=exc.message)
            raise UnservableAdapter(
                f"The model `{name}` cannot be served by this engine: {exc.message}"
            ) from exc
        return adapter

    return load


class LocalDirectorySource:
    """Adapters in sub-directories of ``root`` (NIM's ``LOCAL_PEFT_DIRECTORY`` layout)."""

    def __init__(
        self, root: Path, spec: BaseModelSpec | None = None, limits: ValidationLimits | None = None
    ) -> None:
        self.root = Path(root)
        self.spec = spec
        self.limits = limits or ValidationLimits()

    def verify(self) -> None:
        """Nothing to check up front: a missing directory is an empty source (logged)."""

    def list(self) -> Listing:
        """Every non-hidden sub-directory that holds at least one file. Broken adapters are
        listed too and refused when fetched, so a request for one gets a clear error."""
        entries: dict[str, AdapterEntry] = {}
        if not self.root.is_dir():
            log.warning("peft_source_missing", root=str(self.root))
            return Listing(entries)
        for child in sorted(self.root.iterdir()):
            if not child.is_dir() or child.name.startswith("."):
                continue
            fingerprint = _directory_fingerprint(child)
            if fingerprint is None:
                continue  # empty or being written: try again at the next rescan
            entries[child.name] = AdapterEntry(child.name, fingerprint)
        return Listing(entries)

    def fetch(self, entry: AdapterEntry) -> CanonicalAdapter:
        """Parse and validate the adapter against ``limits`` (and the base model's shapes
        when known); ``AdapterInvalid`` when it does not fit."""
        path = self.root / entry.name
        if not path.is_dir():
            raise UnknownAdapter(f"The model `{entry.name}` does not exist.")
        return load_adapter(path, self.spec, self.limits)


class RegistrySource:
    """The registry's ready adapters of ``base_model``, downloaded on demand."""

    def __init__(
        self,
        client: object,
        base_model: str,
        spec: BaseModelSpec | None = None,
        *,
        download_dir: Path | None = None,
        limits: ValidationLimits | None = None,
    ) -> None:
        self.client = client  # store.client.RegistryClient
        self.base_model = base_model
        self.spec = spec
        self.limits = limits or ValidationLimits()
        self.download_dir = Path(download_dir or tempfile.mkdtemp(prefix="lorafleet-engine-"))

    def verify(self) -> None:
        """Raise ``UnknownBaseModel`` when the registry answers 404 for this engine's base
        model (``GET /v1/base-models/{name}``). Other failures (unreachable, 401) are not
        decided here: listing reports them and is retried."""
        from store.client import ApiError

        try:
            self.client.get_base_model(self.base_model)
        except ApiError as exc:
            if exc.status == 404:
                raise self._unknown_base_model() from exc
            log.warning("peft_source_verify_failed", error=str(exc))

    def list(self) -> Listing:
        """The fleet state: ``{generation, adapters}`` from ``GET /v1/fleet``. Raises
        ``UnknownBaseModel`` on 404 ``unknown_base_model``, ``SourceUnavailable`` on any
        other refusal (the message names ``LORAFLEET_TOKEN`` on 401/403)."""
        from store.client import ApiError

        try:
            state = self.client.fleet(self.base_model)
        except ApiError as exc:
            if exc.status == 404 and exc.code == "unknown_base_model":
                raise self._unknown_base_model() from exc
            raise SourceUnavailable(_unavailable_message(self.client, exc)) from exc
        entries: dict[str, AdapterEntry] = {}
        pinned: set[str] = set()
        for item in state.get("adapters", []):
            name = f"{item['namespace']}/{item['name']}@{item['version']}"
            entries[name] = AdapterEntry(
                name=name,
                fingerprint=str(item.get("manifest_sha256") or item["id"]),
                adapter_id=item["id"],
                rank=item.get("rank"),
                base_model=item.get("base_model", self.base_model),
            )
            if item.get("pinned"):
                pinned.add(name)
        aliases = {}
        for item in state.get("aliases", []):
            alias = _alias_of(item)
            if alias.targets and all(t.name in entries for t in alias.targets):
                aliases[alias.name] = alias
            else:  # the registry lists ready targets only: a torn view, skip the alias
                log.warning("alias_unroutable", alias=alias.name)
        return Listing(
            entries,
            generation=state.get("generation"),
            aliases=aliases,
            pinned=frozenset(pinned),
        )

    def fetch(self, entry: AdapterEntry) -> CanonicalAdapter:
        """Download the canonical files (sha256-verified by the client), parse and validate
        them (``AdapterInvalid`` when the adapter does not fit)."""
        check_entry(entry, self.base_model, self.limits)
        dest = self.download_dir / (entry.adapter_id or _safe(entry.name))
        if dest.exists():
            shutil.rmtree(dest)  # a partial download from an earlier attempt
        dest.mkdir(parents=True)
        from store.client_download import download_adapter

        try:
            download_adapter(self.client, entry.adapter_id, dest)
            return load_adapter(dest, self.spec, self.limits)
        finally:
            shutil.rmtree(dest, ignore_errors=True)  # the CPU cache holds the tensors

    def _unknown_base_model(self) -> UnknownBaseModel:
        return UnknownBaseModel(
            f"the registry has no base model {self.base_model!r}: set NIM_SERVED_MODEL_NAME "
            f"to a registered base model (lorafleet base-models list) or register it"
        )


def _alias_of(item: dict) -> Alias:
    """An ``Alias`` from one ``aliases`` item of the fleet view."""
    adapter = f"{item['namespace']}/{item['name']}"
    return Alias(
        name=f"{adapter}@{item['alias']}",
        targets=tuple(
            Target(f"{adapter}@{t['version']}", int(t["weight"]))
            for t in item.get("targets", [])
            if int(t["weight"]) > 0
        ),
        pinned=bool(item.get("pinned")),
        implicit=bool(item.get("implicit")),
        revision=int(item.get("revision", 0)),
        generation=item.get("generation"),
    )


def _unavailable_message(client: object, exc: object) -> str:
    url = getattr(client, "base_url", "the registry")
    status = getattr(exc, "status", 0)
    if status in (401, 403):
        return (
            f"{url} refused the engine's token ({exc}): set LORAFLEET_TOKEN to a global "
            f"reader token"
        )
    if status == 0:
        return f"{url} is unreachable ({exc}): is the registry API up?"
    return f"{url} answered {exc}"


def _directory_fingerprint(path: Path) -> str | None:
    digest = hashlib.sha256()
    found = False
    for f in sorted(path.rglob("*")):
        if f.is_file():
            st = f.stat()
            digest.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            found = True
    return digest.hexdigest() if found else None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
