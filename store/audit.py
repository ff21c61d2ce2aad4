"""The access log: who did what to which entity, and whether it was allowed.

The API appends one row per audited action (``store.api.deps.record``), in a transaction of
its own so the row survives a failed mutation. A row must be storable whatever the request
carried: ``record_access`` replaces control characters (a NUL the database refuses) and cuts
each value to its column, so a refused request's row is written like any other.
"""

from __future__ import annotations

import unicodedata

from sqlmodel import Session

from store.models import AccessLog

__all__ = ["record_access", "storable"]


def _limit(column: str) -> int:
    return int(AccessLog.__table__.c[column].type.length)  # type: ignore[attr-defined]


def storable(value: str | None, column: str) -> str | None:
    """``value`` fit for the access log's ``column``: control characters and lone surrogates
    replaced by ``?``, cut to the column's length (ending in ``…`` when cut)."""
    if value is None:
        return None
    clean = "".join("?" if unicodedata.category(ch) in ("Cc", "Cs") else ch for ch in value)
    limit = _limit(column)
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def record_access(
    session: Session,
    *,
    actor: str,
    action: str,
    outcome: str,
    target: str | None = None,
    namespace: str | None = None,
    remote_addr: str | None = None,
) -> AccessLog:
    """Append one access-log entry, its values made storable (``storable``)."""
    entry = AccessLog(
        actor=storable(actor, "actor"),
        action=storable(action, "action"),
        target=storable(target, "target"),
        namespace=storable(namespace, "namespace"),
        remote_addr=storable(remote_addr, "remote_addr"),
        outcome=storable(outcome, "outcome"),
    )
    session.add(entry)
    session.flush()
    return entry
