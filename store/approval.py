"""The status machine and the approval policy: the one place that says which status may
follow which, and what a change of status sets in motion.

```
uploading -> validating -> pending -> ready <-> archived
                 |            |
                 +-> failed   +-> rejected
```

``archived -> ready`` is a restore (``store.governance.restore``, a namespace admin); a
plain status change refuses it (``store.registry.transition``). Every step is also recorded
in the status history (``store.history``).

Every transition is a compare-and-set ``UPDATE ... WHERE id = ? AND status = ?``: a lost
race or an edge the machine does not have is ``IllegalTransition`` (409), never a silent
overwrite. In the same transaction a transition writes an ``AdapterStatusChanged`` outbox
row, and a change of serving state (into ``ready``, out of ``ready``) bumps the fleet
generation and writes a ``FleetRefresh`` outbox row (both in ``store.outbox``), so the
event exists exactly when the change does.
"""

from __future__ import annotations

from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session

from store.errors import BadRequest, IllegalTransition, NotFound
from store.history import record_transition
from store.models import AdapterVersion, utcnow
from store.outbox import announce_refresh, announce_status


class Status(StrEnum):
    UPLOADING = "uploading"
    VALIDATING = "validating"
    PENDING = "pending"
    READY = "ready"
    ARCHIVED = "archived"
    FAILED = "failed"
    REJECTED = "rejected"


class ApprovalPolicy(StrEnum):
    AUTO = "auto"  # validated adapters go straight to ready (through pending)
    MANUAL = "manual"  # validated adapters wait in pending for an approver


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.UPLOADING: frozenset({Status.VALIDATING}),
    Status.VALIDATING: frozenset({Status.PENDING, Status.FAILED}),
    Status.PENDING: frozenset({Status.READY, Status.REJECTED}),
    Status.READY: frozenset({Status.ARCHIVED}),
    # Restore (``store.governance.restore``, a namespace admin) is the only way back.
    Status.ARCHIVED: frozenset({Status.READY}),
    Status.FAILED: frozenset(),
    Status.REJECTED: frozenset(),
}


def parse_status(value: str) -> Status:
    """``value`` as a ``Status``; ``BadRequest`` listing the valid ones otherwise."""
    try:
        return Status(value)
    except ValueError:
        valid = ", ".join(s.value for s in Status)
        raise BadRequest(f"unknown status {value!r}; expected one of: {valid}") from None


def parse_policy(value: str) -> ApprovalPolicy:
    """``value`` as an ``ApprovalPolicy``; ``BadRequest`` otherwise."""
    try:
        return ApprovalPolicy(value)
    except ValueError:
        raise BadRequest(f"unknown approval policy {value!r}; expected auto or manual") from None


def check_transition(from_status: str, to_status: str) -> None:
    """Raise ``IllegalTransition`` unless the machine has the edge ``from -> to``."""
    if Status(to_status) not in TRANSITIONS[Status(from_status)]:
        allowed = sorted(s.value for s in TRANSITIONS[Status(from_status)]) or ["none"]
        raise IllegalTransition(
            f"cannot move an adapter from {from_status} to {to_status} "
            f"(allowed from {from_status}: {', '.join(allowed)})"
        )


def statuses_after_validation(policy: str) -> tuple[Status, ...]:
    """The statuses a validated adapter passes through under ``policy``, in order."""
    if parse_policy(policy) is ApprovalPolicy.AUTO:
        return (Status.PENDING, Status.READY)
    return (Status.PENDING,)


def apply_transition(
    session: Session,
    version: AdapterVersion,
    to_status: str,
    *,
    actor: str,
    reason: str | None = None,
    code: str | None = None,
) -> AdapterVersion:
    """Move ``version`` to ``to_status`` with a compare-and-set; does not commit.

    Raises ``IllegalTransition`` if the edge is not in the machine or if the row is no
    longer in the status ``version`` was read with (someone else moved it first).
    """
    from_status = version.status
    check_transition(from_status, parse_status(to_status))
    now = utcnow()
    result = session.execute(
        sa.update(AdapterVersion)
        .where(AdapterVersion.id == version.id, AdapterVersion.status == from_status)
        .values(
            status=to_status,
            status_reason=reason,
            status_code=code,
            updated_at=now,
            updated_by=actor,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        current = session.execute(
            sa.select(AdapterVersion.status).where(AdapterVersion.id == version.id)
        ).scalar_one_or_none()
        if current is None:
            raise NotFound(f"adapter {version.id} not found")
        raise IllegalTransition(
            f"adapter {version.id} is {current}, not {from_status}: "
            f"it changed concurrently, cannot move it to {to_status}"
        )
    # Mirror the row just written onto the object as already-persisted state, so the ORM
    # does not issue a second, unconditional UPDATE of the same columns.
    for key, value in (
        ("status", to_status),
        ("status_reason", reason),
        ("status_code", code),
        ("updated_at", now),
        ("updated_by", actor),
    ):
        set_committed_value(version, key, value)
    announce_status(session, version, from_status, to_status, actor=actor, reason=reason)
    if to_status == Status.READY:
        announce_refresh(session, version, "load")
    elif from_status == Status.READY:
        announce_refresh(session, version, "evict")
    record_transition(session, version, from_status, to_status, actor=actor, reason=reason)
    session.flush()
    return version
