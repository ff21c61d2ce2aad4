"""The transactional outbox and the fleet generation.

Every event the registry announces is written here, as an ``OutboxRow`` in the same
transaction as the change it announces, so the event exists exactly when the change does;
``workers.relay`` publishes pending rows (``pending_outbox``) and marks them sent
(``mark_sent``). Delivery is at-least-once: every entry carries its outbox id.

The fleet generation is the single counter engines reconcile against: every change of
serving state (into ``ready``, out of ``ready``) bumps it (``next_generation``) and writes a
``FleetRefresh`` row carrying it (``announce_refresh``); ``fleet_state`` reads it back
(``current_generation``).

Nothing here commits: the caller's unit of work does (``store.db.session_scope``).
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from sqlmodel import Session

from events.models import AdapterStatusChanged, Event, FleetRefresh
from events.streams import REFRESH_STREAM, STATUS_STREAM
from store.models import AdapterVersion, FleetState, OutboxRow, utcnow
from store.webhooks import fan_out

__all__ = [
    "announce_refresh",
    "announce_status",
    "current_generation",
    "enqueue",
    "mark_sent",
    "next_generation",
    "pending_outbox",
]


# --- the fleet generation ---------------------------------------------------------------


def next_generation(session: Session) -> int:
    """Increment the fleet generation and return it.

    The ``UPDATE`` takes the counter row's lock until the transaction ends, so concurrent
    serving changes serialize on it and generations follow commit order.
    """
    result = session.execute(
        sa.update(FleetState)
        .where(FleetState.id == 1)
        .values(generation=FleetState.generation + 1)
        .returning(FleetState.generation)
    ).scalar_one_or_none()
    if result is None:  # the seed row is missing (hand-made database): recreate it
        session.add(FleetState(id=1, generation=1))
        session.flush()
        return 1
    return int(result)


def current_generation(session: Session) -> int:
    """The fleet generation as committed (0 before the first serving change)."""
    value = session.execute(sa.select(FleetState.generation).where(FleetState.id == 1)).scalar()
    return int(value or 0)


# --- writing events ---------------------------------------------------------------------


def enqueue(session: Session, stream: str, event: Event) -> None:
    """Add ``event`` to the outbox for ``stream``, inside the caller's transaction."""
    session.add(OutboxRow(stream=stream, payload=event.model_dump_json()))


def announce_status(
    session: Session,
    version: AdapterVersion,
    from_status: str | None,
    to_status: str,
    *,
    actor: str | None,
    reason: str | None = None,
) -> None:
    """Write the ``AdapterStatusChanged`` outbox row for one step of ``version``, and its
    webhook deliveries (``store.webhooks.fan_out``)."""
    event = AdapterStatusChanged(
        adapter_id=version.id,
        adapter=version.coordinates,
        base_model=version.base_model,
        from_status=from_status,
        to_status=to_status,
        reason=reason,
        actor=actor,
    )
    enqueue(session, STATUS_STREAM, event)
    fan_out(session, version.namespace, event)


def announce_refresh(
    session: Session, version: AdapterVersion, action: Literal["load", "evict"]
) -> int:
    """Bump the generation, stamp it on ``version`` and write the ``FleetRefresh`` row."""
    generation = next_generation(session)
    version.generation = generation
    enqueue(
        session,
        REFRESH_STREAM,
        FleetRefresh(
            action=action,
            adapter_id=version.id,
            adapter=version.coordinates,
            base_model=version.base_model,
            manifest_sha256=version.manifest_sha256,
            generation=generation,
        ),
    )
    return generation


# --- relaying them ----------------------------------------------------------------------


def pending_outbox(session: Session, limit: int) -> list[OutboxRow]:
    """Up to ``limit`` unsent outbox rows, oldest first. On PostgreSQL the rows stay locked
    (SKIP LOCKED) until the session's transaction ends, so parallel relays split the work."""
    return list(
        session.execute(
            sa.select(OutboxRow)
            .where(OutboxRow.sent_at.is_(None))
            .order_by(OutboxRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )


def mark_sent(session: Session, ids: list[int]) -> None:
    """Mark outbox rows as delivered (idempotent)."""
    if ids:
        session.execute(
            sa.update(OutboxRow)
            .where(OutboxRow.id.in_(list(ids)), OutboxRow.sent_at.is_(None))
            .values(sent_at=utcnow())
            .execution_options(synchronize_session=False)
        )
