"""Namespace quotas: what they count, how a value is checked, how a registration is judged.

A namespace may cap the number of versions it holds (``max_versions``) and the bytes of
their stored blobs, originals plus canonical files (``max_bytes``); None means no cap. Blobs
are content-addressed, so ``max_bytes`` counts each distinct digest in the namespace once: a
canonical file identical to its original, or a file shared by two versions, is stored and
counted once. Quotas count every version that holds files, i.e. every status except
``failed`` (rejected and archived versions still hold blobs until purged). A stricter quota
does not remove versions already stored: it refuses the next registration
(``QuotaExceeded``).
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlmodel import Session

from store.approval import Status
from store.db import begin_write
from store.errors import BadRequest, NotFound, QuotaExceeded
from store.models import AdapterFile, AdapterVersion, Namespace, PackageFile

__all__ = ["HOLDS_FILES", "check_quota_value", "enforce_quota", "lock_namespace"]

# Statuses whose rows hold stored files and so count against a namespace's quota.
HOLDS_FILES: frozenset[Status] = frozenset(Status) - {Status.FAILED}


def check_quota_value(value: int | None, what: str) -> None:
    """``BadRequest`` unless ``value`` is a non-negative integer or None (no cap)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise BadRequest(f"{what} must be a non-negative integer or null, got {value!r}")


def lock_namespace(session: Session, namespace: str) -> Namespace:
    """The namespace row, locked until the transaction ends; ``NotFound`` otherwise.

    The row lock serializes quota checks of concurrent registrations (PostgreSQL); on SQLite
    the database's write lock does (``begin_write``)."""
    begin_write(session)
    ns = session.execute(
        sa.select(Namespace).where(Namespace.name == namespace).with_for_update()
    ).scalar_one_or_none()
    if ns is None:
        raise NotFound(f"namespace {namespace!r} not found")
    return ns


def _stored_digests(ns: Namespace) -> sa.Select:
    """(sha256, size) of every distinct blob the counted versions of ``ns`` hold."""
    return (
        sa.select(AdapterFile.sha256, AdapterFile.size)
        .join(AdapterVersion, AdapterVersion.id == AdapterFile.adapter_id)
        .where(AdapterVersion.namespace == ns.name)
        .where(AdapterVersion.status.in_([s.value for s in HOLDS_FILES]))
        .distinct()
    )


def enforce_quota(session: Session, ns: Namespace, new_files: Iterable[PackageFile]) -> None:
    """``QuotaExceeded`` if one more version holding ``new_files`` would pass a quota of
    ``ns`` (lock it first with ``lock_namespace``). Only the blobs the namespace does not
    hold yet count as new bytes, each distinct digest once."""
    count = session.execute(
        sa.select(sa.func.count())
        .select_from(AdapterVersion)
        .where(AdapterVersion.namespace == ns.name)
        .where(AdapterVersion.status.in_([s.value for s in HOLDS_FILES]))
    ).scalar_one()
    if ns.max_versions is not None and count + 1 > ns.max_versions:
        raise QuotaExceeded(
            f"namespace {ns.name!r} holds {count} of its {ns.max_versions} allowed versions"
        )
    if ns.max_bytes is None:
        return
    stored = _stored_digests(ns).subquery()
    used = session.execute(sa.select(sa.func.coalesce(sa.func.sum(stored.c.size), 0))).scalar_one()
    new = {f.sha256: f.size for f in new_files}
    if new:
        held = session.execute(
            sa.select(stored.c.sha256).where(stored.c.sha256.in_(list(new)))
        ).scalars()
        for digest in held:
            new.pop(digest, None)
    extra_bytes = sum(new.values())
    if used + extra_bytes > ns.max_bytes:
        raise QuotaExceeded(
            f"namespace {ns.name!r} holds {used} bytes; {extra_bytes} more would pass its "
            f"quota of {ns.max_bytes} bytes"
        )
