"""Packaging: an adapter directory turned into a ``Package`` whose files are stored blobs.

``prepare_package`` parses, validates and converts the adapter (``store.formats``), then
uploads its original and canonical files, blob before row: a version committed afterwards
(``store.registry.commit_version``) never points at a missing file. ``content_digest`` is
the immutability key versions are compared by. Nothing here touches the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from store.errors import AdapterInvalid
from store.models import Package, PackageFile

if TYPE_CHECKING:
    from store.blobs import BlobStore
    from store.formats.spec import BaseModelSpec, CanonicalAdapter, ValidationLimits

__all__ = ["content_digest", "original_files", "prepare_package"]


def original_files(source_dir: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``source_dir`` as (safe relative posix path, path), sorted."""
    if not source_dir.is_dir():
        raise AdapterInvalid("missing_file", f"adapter directory {source_dir} does not exist")
    found: list[tuple[str, Path]] = []
    for path in sorted(source_dir.rglob("*")):
        if path.is_symlink():
            # A link could point anywhere on the host; uploads are plain files only.
            raise AdapterInvalid("unsafe_archive", f"{path.name} is a symbolic link")
        if not path.is_file():
            continue
        rel = PurePosixPath(path.relative_to(source_dir).as_posix())
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise AdapterInvalid("unsafe_archive", f"unsafe file path {rel}")
        found.append((str(rel), path))
    if not found:
        raise AdapterInvalid("missing_file", f"adapter directory {source_dir} is empty")
    return found


def content_digest(originals: dict[str, str]) -> str:
    """The immutability key: sha256 over sorted ``path\\tsha256\\n`` of the original files."""
    h = hashlib.sha256()
    for path in sorted(originals):
        h.update(f"{path}\t{originals[path]}\n".encode())
    return h.hexdigest()


def _untimed(name: str) -> AbstractContextManager[object]:
    return nullcontext()


def prepare_package(
    blobs: BlobStore,
    source_dir: Path,
    spec: BaseModelSpec,
    limits: ValidationLimits,
    *,
    stage: Callable[[str], AbstractContextManager[object]] = _untimed,
) -> Package:
    """Parse, validate and convert the adapter in ``source_dir``, then store its original
    and canonical files as blobs. Nothing is uploaded unless the adapter is valid; every
    blob is verified before this returns, so the row committed afterwards never points at
    a missing file. Raises ``AdapterInvalid`` (final) or ``TransientError`` (retry).
    ``stage(name)`` wraps the ``parse_validate`` and ``blob_write`` steps (timing)."""
    from store.formats.canonical import build_manifest, manifest_digest
    from store.formats.detect import load_adapter

    source_dir = Path(source_dir)
    originals = original_files(source_dir)
    with stage("parse_validate"):
        adapter = load_adapter(source_dir, spec, limits)
    with stage("blob_write"):
        files = _store_files(blobs, originals, adapter)
    canonical = {f.path: (f.sha256, f.size) for f in files if f.role == "canonical"}
    manifest = build_manifest(adapter, spec, canonical)
    return Package(
        source_format=adapter.source_format,
        rank=adapter.rank,
        alpha=float(adapter.alpha),
        target_modules=sorted(adapter.target_modules),
        files=tuple(files),
        manifest=manifest,
        manifest_sha256=manifest_digest(manifest),
        content_sha256=content_digest({f.path: f.sha256 for f in files if f.role == "original"}),
    )


def _store_files(
    blobs: BlobStore, originals: list[tuple[str, Path]], adapter: CanonicalAdapter
) -> list[PackageFile]:
    """Upload the original files and the canonical form of ``adapter``."""
    from store.formats.canonical import canonical_files

    files: list[PackageFile] = []
    for rel, path in originals:
        ref = blobs.put_file(path)
        files.append(PackageFile(rel, "original", ref.sha256, ref.size, ref.key))
    stored = {(f.sha256, f.size): f for f in files}
    # Serialized in memory and stored once: no temporary copy written and read back (81 MB
    # adapters: one write + one read of their size less per registration). A canonical file
    # with an original's bytes is that blob: an fp32 peft ``save_pretrained`` weights file
    # is byte-identical to the canonical one, so it is not hashed, written and fsynced again.
    for name, data in sorted(canonical_files(adapter).items()):
        same = None  # hashed here only when an original has its size (else: a second pass)
        if any(size == len(data) for _, size in stored):
            same = stored.get((hashlib.sha256(data).hexdigest(), len(data)))
        if same is not None:
            files.append(PackageFile(name, "canonical", same.sha256, same.size, same.blob_key))
            continue
        ref = blobs.put_bytes(data)
        files.append(PackageFile(name, "canonical", ref.sha256, ref.size, ref.key))
    return files
