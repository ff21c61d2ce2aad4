"""Metered usage: folding engines' flushes into hourly buckets, and reading them back.

``fold_flush`` is idempotent by ``(engine_id, flush_id)``: the flush's record and its counts
are written in one transaction, so a flush delivered again (a redelivered stream entry, a
replay) adds nothing. ``usage_report`` answers ``GET /v1/usage``, limited to the
namespaces the caller may read. Nothing here commits: the caller's unit of work does.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from events.usage import UsageFlush
from store.auth import Principal
from store.db import savepoint
from store.errors import BadRequest
from store.models import UsageBucket, UsageFlushRecord

log = structlog.get_logger(__name__)

GroupBy = Literal["version", "adapter", "token", "hour", "alias"]
GROUP_BY: tuple[str, ...] = ("version", "adapter", "token", "hour", "alias")
COUNTERS = ("requests", "prompt_tokens", "completion_tokens", "errors", "cancelled")
FOLDED = (*COUNTERS, "latency_ms")  # what a flush adds to a bucket


def fold_flush(session: Session, flush: UsageFlush) -> bool:
    """Add ``flush``'s counts to the hourly buckets; False (and nothing added) when this
    ``(engine_id, flush_id)`` was folded before."""
    try:
        with savepoint(session):
            session.add(UsageFlushRecord(engine_id=flush.engine_id, flush_id=flush.flush_id))
    except IntegrityError:
        log.info("usage.flush_replayed", engine_id=flush.engine_id, flush_id=flush.flush_id)
        return False
    for count in flush.counts:
        key = {
            "hour": count.hour,
            "token_id": count.token_id or 0,
            "namespace": count.namespace or "",
            "adapter": count.adapter or "",
            "alias": count.alias or "",
            "base_model": flush.base_model,
        }
        amounts = {name: getattr(count, name) for name in FOLDED}
        _add(session, key, amounts)
    session.flush()
    return True


def _add(session: Session, key: dict[str, Any], amounts: dict[str, int]) -> None:
    """``bucket += amounts``, creating the bucket when it is the first of its key (a
    concurrent creator is absorbed by the retried update)."""
    where = [getattr(UsageBucket, k) == v for k, v in key.items()]
    increment = {name: getattr(UsageBucket, name) + amount for name, amount in amounts.items()}
    for _ in range(2):
        updated = session.execute(sa.update(UsageBucket).where(*where).values(**increment))
        if updated.rowcount:  # type: ignore[attr-defined]
            return
        try:
            with savepoint(session):
                session.add(UsageBucket(**key, **amounts))
            return
        except IntegrityError:
            continue  # created meanwhile by another fold: update it
    raise RuntimeError(f"usage bucket {key} could neither be updated nor created")


def usage_report(
    session: Session,
    caller: Principal,
    *,
    namespace: str | None = None,
    adapter: str | None = None,
    alias: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    group_by: str = "version",
) -> list[dict[str, Any]]:
    """Usage summed by ``group_by`` (``version``: adapter coordinates, ``adapter``:
    ``namespace/name``, ``token``: token id, ``hour``, ``alias``: one row per arm, i.e. per
    (alias named, version served), with ``latency_ms`` and ``mean_latency_ms``; requests
    that named exact coordinates have ``alias`` None) over buckets with ``start <= hour <
    end``, only of namespaces the caller may read (a global token: also the base model used
    without a tenant). ``adapter`` is ``ns/name`` or ``ns/name@version`` (the version
    served); ``alias`` is ``ns/name@alias`` (the alias named). A namespace the caller may
    not read answers ``NotFound``, like a missing one."""
    if group_by not in GROUP_BY:
        raise BadRequest(f"group_by must be one of {', '.join(GROUP_BY)}, got {group_by!r}")
    query = select(UsageBucket)
    if namespace is not None:
        caller.require_read(namespace, f"namespace {namespace!r} not found")
        query = query.where(UsageBucket.namespace == namespace)
    visible = caller.visible_namespaces()
    if visible is not None:
        query = query.where(UsageBucket.namespace.in_(sorted(visible)))  # type: ignore[attr-defined]
    if adapter is not None:
        if "@" in adapter:
            query = query.where(UsageBucket.adapter == adapter)
        else:
            query = query.where(UsageBucket.adapter.startswith(adapter + "@"))  # type: ignore[attr-defined]
    if alias is not None:
        query = query.where(UsageBucket.alias == alias)
    if start is not None:
        query = query.where(UsageBucket.hour >= start)
    if end is not None:
        query = query.where(UsageBucket.hour < end)
    return _grouped(session.exec(query).all(), group_by)


def _group_key(row: UsageBucket, group_by: str) -> dict[str, Any]:
    if group_by == "version":
        return {"namespace": row.namespace or None, "adapter": row.adapter or None}
    if group_by == "adapter":
        return {"namespace": row.namespace or None, "adapter": row.adapter.split("@")[0] or None}
    if group_by == "token":
        return {"token_id": row.token_id or None}
    if group_by == "alias":
        return {
            "namespace": row.namespace or None,
            "alias": row.alias or None,
            "adapter": row.adapter or None,
        }
    return {"hour": row.hour.isoformat().replace("+00:00", "Z")}


def _grouped(rows: Iterable[UsageBucket], group_by: str) -> list[dict[str, Any]]:
    summed = FOLDED if group_by == "alias" else COUNTERS
    sums: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = _group_key(row, group_by)
        entry = sums.setdefault(tuple(key.values()), {**key, **dict.fromkeys(summed, 0)})
        for name in summed:
            entry[name] += getattr(row, name)
    if group_by == "alias":
        for entry in sums.values():
            entry["mean_latency_ms"] = round(entry["latency_ms"] / max(entry["requests"], 1), 3)
    return sorted(sums.values(), key=lambda e: tuple(str(v) for v in e.values()))
