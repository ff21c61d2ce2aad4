"""Repos, revisions and commit ids of the Hugging Face–compatible API.

Mapping: repo id ``namespace/name`` is an adapter; a revision is one of its versions
(``1.2.0``), ``main`` (the highest ready version, by semantic-version order) or a commit id.
A commit id is 40 lowercase hex digits derived from the version's coordinates and the
digests of the files it shows, so it never changes (a version is immutable) and names one
version only.

What a revision shows: the version's canonical files (the HF PEFT files engines load;
``adapter_config.json`` names the version's base model), plus every uploaded original at a path no canonical file takes (a README.md, tokenizer
files). Every file is listed as LFS with its sha256 as ``oid``, the same value ``resolve``
answers as ``ETag``.

Visibility is the REST API's: a caller who may not read the namespace gets
``RepoNotFound``, exactly as for a repo that does not exist. Versions that never validated
(``uploading``, ``validating``, ``failed``) are not revisions. Repos are implicit: a name
without versions is ``RepoNotFound`` to readers, and an empty repo (``RevisionNotFound``) to
a writer of the namespace, who may create it by committing a version (``create_repo`` and
``create_branch`` store nothing; see ``store.hf.commits``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session

from store import catalog
from store.approval import Status
from store.auth import Principal
from store.blobs import BlobStore
from store.errors import LorafleetError, NotFound
from store.models import AdapterFile, AdapterVersion

MAIN = "main"
CONFIG = "adapter_config.json"
_COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")
_NOT_REVISIONS = {Status.UPLOADING.value, Status.VALIDATING.value, Status.FAILED.value}
# The size of a Git LFS pointer file, which HF's clients expect in ``lfs.pointerSize``.
LFS_POINTER_SIZE = 134


class RepoNotFound(NotFound):
    """No such repo, or one the caller may not see (HF ``X-Error-Code: RepoNotFound``)."""

    hf_code = "RepoNotFound"


class RevisionNotFound(NotFound):
    """The repo exists, the revision does not (HF ``RevisionNotFound``)."""

    hf_code = "RevisionNotFound"


class EntryNotFound(NotFound):
    """The revision exists, the file does not (HF ``EntryNotFound``)."""

    hf_code = "EntryNotFound"


@dataclass(frozen=True)
class RepoFile:
    """A file a revision shows, at ``path``: a stored blob, or ``content`` derived from one
    (the ``adapter_config.json`` naming its base model, see ``shown_files``)."""

    path: str
    sha256: str
    size: int
    blob_key: str
    content: bytes | None = None  # derived bytes served instead of the blob's


@dataclass(frozen=True)
class Revision:
    """A resolved revision: the version, its commit id and the files it shows."""

    version: AdapterVersion
    commit_id: str
    files: tuple[RepoFile, ...]

    @property
    def repo_id(self) -> str:
        return f"{self.version.namespace}/{self.version.name}"

    @property
    def last_modified(self) -> datetime:
        return self.version.created_at

    def file(self, path: str) -> RepoFile:
        """The file at ``path``; ``EntryNotFound`` otherwise."""
        for f in self.files:
            if f.path == path:
                return f
        raise EntryNotFound(f"{path!r} not found in {self.repo_id} at {self.version.version}")


def shown_files(rows: list[AdapterFile], base_model: str, blobs: BlobStore) -> tuple[RepoFile, ...]:
    """Canonical files, plus originals at paths no canonical file takes; sorted by path.

    The canonical ``adapter_config.json`` leaves ``base_model_name_or_path`` empty (one
    blob for every base model); shown here it names the version's base model, as the
    Hub's adapters do and as vLLM's resolvers require (they load an adapter only when it
    names vLLM's ``--model``)."""
    chosen: dict[str, AdapterFile] = {f.path: f for f in rows if f.role == "canonical"}
    for f in rows:
        chosen.setdefault(f.path, f)
    shown = []
    for path, f in sorted(chosen.items()):
        if path == CONFIG and f.role == "canonical":
            shown.append(_naming_base_model(f, base_model, blobs))
        else:
            shown.append(RepoFile(f.path, f.sha256, f.size, f.blob_key))
    return tuple(shown)


def _naming_base_model(f: AdapterFile, base_model: str, blobs: BlobStore) -> RepoFile:
    config = json.loads(b"".join(blobs.iter_chunks(f.blob_key)))
    if config.get("base_model_name_or_path"):
        return RepoFile(f.path, f.sha256, f.size, f.blob_key)
    config["base_model_name_or_path"] = base_model
    # The canonical writer's layout (``store.formats.hf_peft``): deterministic bytes.
    data = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    return RepoFile(f.path, hashlib.sha256(data).hexdigest(), len(data), f.blob_key, data)


def commit_id(version: AdapterVersion, files: tuple[RepoFile, ...]) -> str:
    """40 lowercase hex: sha256 over the coordinates and ``path\\tsha256`` of each file."""
    h = hashlib.sha256(f"{version.namespace}/{version.name}@{version.version}\n".encode())
    for f in files:
        h.update(f"{f.path}\t{f.sha256}\n".encode())
    return h.hexdigest()[:40]


def _revision(session: Session, version: AdapterVersion, blobs: BlobStore) -> Revision:
    files = shown_files(catalog.list_files(session, version.id), version.base_model, blobs)
    return Revision(version, commit_id(version, files), files)


def _may_write(caller: Principal, namespace: str) -> bool:
    try:
        caller.require_role(namespace, "writer", "")
    except LorafleetError:
        return False
    return True


def resolve(
    session: Session,
    blobs: BlobStore,
    caller: Principal,
    namespace: str,
    name: str,
    revision: str,
) -> Revision:
    """The revision ``revision`` of repo ``namespace/name`` as ``caller`` may see it.

    ``RepoNotFound`` when the caller may not read the namespace or the adapter has no
    version that validated; ``RevisionNotFound`` when ``revision`` is neither such a
    version, nor ``main`` with a ready version, nor one of their commit ids."""
    repo = f"{namespace}/{name}"
    if not caller.can_read(namespace):
        raise RepoNotFound(f"repository {repo} not found")
    try:
        catalog.get_namespace(session, namespace)
    except NotFound:
        raise RepoNotFound(f"repository {repo} not found") from None
    versions = [
        v for v in catalog.list_versions(session, namespace, name) if v.status not in _NOT_REVISIONS
    ]
    if not versions:
        if _may_write(caller, namespace):  # a repo a writer could commit to: empty, not absent
            raise RevisionNotFound(f"{repo} has no version {revision!r} yet")
        raise RepoNotFound(f"repository {repo} not found")
    missing = RevisionNotFound(f"revision {revision!r} not found in {repo}")
    if revision == MAIN:
        ready = [v for v in versions if v.status == Status.READY]
        if not ready:
            raise RevisionNotFound(f"{repo} has no ready version for revision 'main'")
        return _revision(session, ready[-1], blobs)
    for v in versions:
        if v.version == revision:
            return _revision(session, v, blobs)
    if _COMMIT_ID.match(revision):
        for v in reversed(versions):
            found = _revision(session, v, blobs)
            if found.commit_id == revision:
                return found
    raise missing


def tree(revision: Revision, path: str, *, recursive: bool) -> list[dict[str, object]]:
    """HF tree entries under ``path`` ('' for the root): files and directories, directories
    first at each level as the Hub lists them. ``EntryNotFound`` for a path that is
    neither a directory nor a file of the revision."""
    prefix = path.strip("/")
    if prefix and any(f.path == prefix for f in revision.files):
        return [_file_entry(revision.file(prefix))]
    under = [f for f in revision.files if not prefix or f.path.startswith(prefix + "/")]
    if prefix and not under:
        raise EntryNotFound(f"{prefix!r} not found in {revision.repo_id}")
    start = len(prefix) + 1 if prefix else 0
    directories: set[str] = set()
    files: list[dict[str, object]] = []
    for f in under:
        parts = f.path[start:].split("/")
        for depth in range(1, len(parts)):
            if depth > 1 and not recursive:
                break
            directories.add(f.path[:start] + "/".join(parts[:depth]))
        if recursive or len(parts) == 1:
            files.append(_file_entry(f))
    folders = [
        {"type": "directory", "path": d, "oid": hashlib.sha256(d.encode()).hexdigest()[:40]}
        for d in sorted(directories)
    ]
    return folders + files


def _file_entry(f: RepoFile) -> dict[str, object]:
    return {
        "type": "file",
        "path": f.path,
        "size": f.size,
        "oid": f.sha256[:40],
        "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": LFS_POINTER_SIZE},
    }


def model_info(revision: Revision) -> dict[str, object]:
    """The ``GET /api/models/{repo}`` answer: id, sha, dates, siblings with sizes."""
    v = revision.version
    when = v.created_at.isoformat().replace("+00:00", "Z")
    return {
        "_id": v.id,
        "id": revision.repo_id,
        "modelId": revision.repo_id,
        "author": v.namespace,
        "sha": revision.commit_id,
        "lastModified": when,
        "createdAt": when,
        "private": True,
        "gated": False,
        "disabled": False,
        "library_name": "peft",
        "tags": ["peft", "lora", f"base_model:adapter:{v.base_model}"],
        "cardData": {"base_model": v.base_model, "library_name": "peft"},
        "siblings": [
            {
                "rfilename": f.path,
                "size": f.size,
                "blobId": f.sha256[:40],
                "lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": LFS_POINTER_SIZE},
            }
            for f in revision.files
        ],
        "lorafleet": {"version": v.version, "status": v.status, "adapter_id": v.id},
    }
