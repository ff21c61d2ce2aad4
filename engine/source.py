"""PEFT sources (NIM's ``NIM_PEFT_SOURCE``): where an engine discovers and fetches adapters.

* ``RegistrySource``: the registry's ready set for this engine's base model
  (``GET /v1/fleet``); served names are ``namespace/name@version``.
* ``LocalDirectorySource``: NIM's layout, one adapter per sub-directory in any of the three
  formats; the served name is the directory name.

A source only lists and fetches; the ``Catalog`` holds what is servable right now and the
refresh reconciler (``engine/refresh.py``) keeps it in step with the source.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from engine.cache import UnknownAdapter
from store.errors import AdapterInvalid
from store.formats import BaseModelSpec, CanonicalAdapter, ValidationLimits, load_adapter

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
    """A source's view at one moment: its adapters and (registry only) its generation."""

    entries: dict[str, AdapterEntry]
    generation: int | None = None


class PeftSource(Protocol):
    """What the reconciler and the CPU cache need from a source."""

    def list(self) -> Listing: ...
    def fetch(self, entry: AdapterEntry) -> CanonicalAdapter: ...


class Catalog:
    """The adapters this engine serves right now (``/v1/models``), thread-safe."""

    def __init__(self) -> None:
        self._entries: dict[str, AdapterEntry] = {}
        self._lock = threading.Lock()
        self.generation: int | None = None

    def get(self, name: str) -> AdapterEntry:
        """The entry for ``name``; ``UnknownAdapter`` when it is not servable."""
        with self._lock:
            entry = self._entries.get(name)
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
        """Add or replace ``entry``; returns the entry it replaced."""
        with self._lock:
            old = self._entries.get(entry.name)
            self._entries[entry.name] = entry
            return old

    def remove(self, name: str) -> AdapterEntry | None:
        """Stop serving ``name``; returns the removed entry."""
        with self._lock:
            return self._entries.pop(name, None)


class LocalDirectorySource:
    """Adapters in sub-directories of ``root`` (NIM's ``LOCAL_PEFT_DIRECTORY`` layout)."""

    def __init__(
        self, root: Path, spec: BaseModelSpec | None = None, limits: ValidationLimits | None = None
    ) -> None:
        self.root = Path(root)
        self.spec = spec
        self.limits = limits or ValidationLimits()

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
        """Parse and validate the adapter (shapes against the base model when known)."""
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

    def list(self) -> Listing:
        """The fleet state: ``{generation, adapters}`` from ``GET /v1/fleet``."""
        state = self.client.fleet(self.base_model)  # type: ignore[attr-defined]
        entries: dict[str, AdapterEntry] = {}
        for item in state.get("adapters", []):
            name = f"{item['namespace']}/{item['name']}@{item['version']}"
            entries[name] = AdapterEntry(
                name=name,
                fingerprint=str(item.get("manifest_sha256") or item["id"]),
                adapter_id=item["id"],
                rank=item.get("rank"),
                base_model=item.get("base_model", self.base_model),
            )
        return Listing(entries, generation=state.get("generation"))

    def fetch(self, entry: AdapterEntry) -> CanonicalAdapter:
        """Download the canonical files (sha256-verified by the client) and parse them."""
        if entry.base_model is not None and entry.base_model != self.base_model:
            raise AdapterInvalid(
                "unknown_base_model",
                f"adapter {entry.name} is for base model {entry.base_model!r}, "
                f"this engine serves {self.base_model!r}",
            )
        dest = self.download_dir / (entry.adapter_id or _safe(entry.name))
        if dest.exists():
            shutil.rmtree(dest)  # a partial download from an earlier attempt
        dest.mkdir(parents=True)
        try:
            self.client.download_adapter(entry.adapter_id, dest)  # type: ignore[attr-defined]
            return load_adapter(dest, self.spec, self.limits)
        finally:
            shutil.rmtree(dest, ignore_errors=True)  # the CPU cache holds the tensors


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
