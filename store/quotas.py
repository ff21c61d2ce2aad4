"""Namespace quotas: what they count, how a value is checked, how a registration is judged.

A namespace may cap the number of versions it holds (``max_versions``) and their bytes,
originals plus canonical files (``max_bytes``); None means no cap. Quotas count every
version that holds files, i.e. every status except ``failed`` (rejected and archived
versions still hold blobs until purged). A stricter quota does not remove versions already
stored: it refuses the next registration (``QuotaExceeded``).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session

from store.approval import Status
from store.db import begin_write
from store.errors import BadRequest, NotFound, QuotaExceeded
from store.models import AdapterVersion, Namespace

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


def enforce_quota(session: Session, ns: Namespace, extra_bytes: int) -> None:
    """``QuotaExceeded`` if one more version of ``extra_bytes`` would pass a quota of
    ``ns`` (lock it first with ``lock_namespace``)."""
    count, used = session.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(AdapterVersion.total_bytes), 0))
        .where(AdapterVersion.namespace == ns.name)
        .where(AdapterVersion.status.in_([s.value for s in HOLDS_FILES]))
    ).one()
    if ns.max_versions is not None and count + 1 > ns.max_versions:
        raise QuotaExceeded(
            f"namespace {ns.name!r} holds {count} of its {ns.max_versions} allowed versions"
        )
    if ns.max_bytes is not None and used + extra_bytes > ns.max_bytes:
        raise QuotaExceeded(
            f"namespace {ns.name!r} holds {used} bytes; {extra_bytes} more would pass its "
            f"quota of {ns.max_bytes} bytes"
        )
