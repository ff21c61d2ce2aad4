"""The access log: who did what to which entity, and whether it was allowed.

The API appends one row per audited action (``store.api.deps.record``), in a transaction of
its own so the row survives a failed mutation.
"""

from __future__ import annotations

from sqlmodel import Session

from store.models import AccessLog

__all__ = ["record_access"]


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
    """Append one access-log entry."""
    entry = AccessLog(
        actor=actor,
        action=action,
        target=target,
        namespace=namespace,
        remote_addr=remote_addr,
        outcome=outcome,
    )
    session.add(entry)
    session.flush()
    return entry
