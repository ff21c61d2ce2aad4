"""An HF commit (``create_commit``, ``upload_folder``, ``hf upload``) registered as an adapter
version, through ``store.registry.register_adapter``: the same packaging, validation,
quotas and approval policy as ``POST /v1/adapters``.

The rule for versions: **a commit creates the version its revision names.**
``upload_folder(..., revision="1.3.0")`` registers ``namespace/name@1.3.0`` from exactly the
files of that one commit, which must be a complete adapter (``adapter_config.json`` and its
weights, as ``save_pretrained`` writes them). There is no staging across commits: a version
is immutable, so a second commit to ``1.3.0`` with the same files is a no-op answering the
same commit id, and with other files a ``version_conflict`` (409); to change an adapter,
commit a new version. A commit to ``main`` (or to anything that is not a version) is refused
with ``revision_required``: ``main`` is what readers get, the highest ready version, never a
place to write. Deletions and copies are refused (``immutable_version``): nothing a commit
could delete exists in the version it creates.

The base model is the registered base model named by ``base_model_name_or_path`` in
``adapter_config.json`` (what PEFT writes), else by ``base_model`` in the ``README.md``
front matter (PEFT's model card); neither registered is ``unknown_base_model`` (422).

An adapter that fails validation is the ``AdapterInvalid`` code (422) and leaves nothing
registered: a version exists only once its commit fully succeeded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from sqlmodel import Session

from events.models import NAME_PATTERN, is_version
from store import catalog, registry
from store.auth import Principal
from store.blobs import BlobStore
from store.errors import AdapterInvalid, BadRequest, NotFound
from store.formats.spec import ValidationLimits
from store.hf import repos
from store.models import BaseModelRecord, Provenance

__all__ = ["base_model_of", "check_writable", "commit_adapter", "front_matter"]


def check_writable(session: Session, caller: Principal, namespace: str, name: str) -> None:
    """``RepoNotFound`` when ``caller`` cannot see ``namespace`` or it does not exist;
    ``Forbidden`` when it may read but not write there; ``BadRequest`` for a bad name."""
    repo = f"{namespace}/{name}"
    if not caller.can_read(namespace):
        raise repos.RepoNotFound(f"repository {repo} not found")
    try:
        catalog.get_namespace(session, namespace)
    except NotFound:
        raise repos.RepoNotFound(f"repository {repo} not found") from None
    caller.require_role(namespace, "writer", f"repository {repo} not found")
    if re.fullmatch(NAME_PATTERN, name) is None:
        raise BadRequest(f"{name!r} is not an adapter name (lowercase letters, digits, - _ .)")


def check_revision(revision: str) -> str:
    """``revision`` if it is a version a commit may create; ``revision_required`` otherwise."""
    if not is_version(revision):
        raise BadRequest(
            f"commit to a version, not {revision!r}: pass revision='1.2.0' (a new semantic "
            f"version); 'main' is the highest ready version and is never written",
            code="revision_required",
        )
    return revision


def front_matter(text: str) -> dict[str, object]:
    """The YAML front matter of a model card (``---`` ... ``---``), ``{}`` without one;
    ``BadRequest`` (``invalid_yaml``) when it does not parse to a mapping."""
    if not text.startswith("---"):
        return {}
    body = text[3:].split("\n---", 1)[0]
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise BadRequest(
            f"the model card's YAML does not parse: {exc}", code="invalid_yaml"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadRequest("the model card's YAML must be a mapping", code="invalid_yaml")
    return data


def base_model_of(session: Session, source: Path) -> str:
    """The registered base model the adapter in ``source`` names (see the module doc)."""
    named: list[str] = []
    config = source / "adapter_config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (ValueError, UnicodeDecodeError, AttributeError):
            value = None  # the format validation names what is wrong with it
        if isinstance(value, str) and value:
            named.append(value)
    card = source / "README.md"
    if card.is_file():
        value = front_matter(card.read_text(encoding="utf-8", errors="replace")).get("base_model")
        if isinstance(value, str) and value:
            named.append(value)
    for candidate in named:
        if session.get(BaseModelRecord, candidate) is not None:
            return candidate
    raise AdapterInvalid(
        "unknown_base_model",
        f"none of the base models the adapter names ({', '.join(map(repr, named)) or 'none'}) "
        "is registered: set base_model_name_or_path in adapter_config.json to a registered "
        "base model",
    )


def commit_adapter(
    session: Session,
    blobs: BlobStore,
    caller: Principal,
    *,
    namespace: str,
    name: str,
    revision: str,
    source: Path,
    limits: ValidationLimits,
) -> tuple[repos.Revision, bool]:
    """Register the files in ``source`` as ``namespace/name@revision``; returns the new (or,
    for the same bytes again, existing) revision and whether it was created."""
    check_writable(session, caller, namespace, name)
    version = check_revision(revision)
    base_model = base_model_of(session, source)
    row, created = registry.register_adapter(
        session,
        blobs,
        namespace=namespace,
        name=name,
        version=version,
        base_model=base_model,
        source_dir=source,
        provenance=Provenance(),
        actor=caller.actor,
        limits=limits,
    )
    session.flush()
    return repos.resolve(session, blobs, caller, namespace, name, version), created
