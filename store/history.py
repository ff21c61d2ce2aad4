"""The status history: one ``StatusTransition`` row per step a version takes through the
status machine, written by ``store.approval.apply_transition`` in the transaction of the
step itself, so the history holds a step exactly when the step happened."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session

from store.models import AdapterVersion, StatusTransition

__all__ = ["list_history", "record_transition"]


def record_transition(
    session: Session,
    version: AdapterVersion,
    from_status: str | None,
    to_status: str,
    *,
    actor: str,
    reason: str | None,
) -> StatusTransition:
    """Append the step ``from_status -> to_status`` of ``version`` (its generation as it is
    after the step); does not commit."""
    row = StatusTransition(
        adapter_id=version.id,
        namespace=version.namespace,
        from_status=from_status,
        to_status=to_status,
        actor=actor,
        reason=reason,
        generation=version.generation or None,
    )
    session.add(row)
    return row


def list_history(session: Session, adapter_id: str) -> list[StatusTransition]:
    """Every recorded step of ``adapter_id``, oldest first."""
    return list(
        session.execute(
            sa.select(StatusTransition)
            .where(StatusTransition.adapter_id == adapter_id)
            .order_by(StatusTransition.id)
        ).scalars()
    )
