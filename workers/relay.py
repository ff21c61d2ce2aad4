"""The outbox relay: publishes events the registry committed to the outbox table.

The registry writes each ``FleetRefresh`` / ``AdapterStatusChanged`` row in the same
transaction as the change it announces; this relay XADDs pending rows to their stream and
then marks them sent. Delivery is at-least-once: a crash between XADD and ``mark_sent``
publishes the row again, so every entry carries ``outbox_id`` for consumers to dedup (and
refresh events are hints carrying a generation anyway).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager

import redis
import structlog
from sqlmodel import Session

from events import streams
from store import outbox

log = structlog.get_logger(__name__)

# Compare-and-delete, so a relay whose lock expired never releases another relay's lock.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

SessionFactory = Callable[[], AbstractContextManager[Session]]


def relay_outbox(
    session_factory: SessionFactory,
    client: redis.Redis,
    *,
    batch: int = 500,
    max_batches: int = 20,
    lock_ms: int = 30_000,
    wait_s: float = 0.0,
) -> int:
    """Publish pending outbox rows in id order and mark them sent; returns how many.

    One relay at a time holds a Redis lock, so concurrent kicks (beat + ``broadcast``) do
    not publish the same rows twice nor out of order. A relay that finds the lock taken
    waits up to ``wait_s`` for it (the holder may have read the table before the caller's
    row committed), then returns 0. A row is marked sent only after its XADD returned.
    """
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    while not client.set(streams.RELAY_LOCK_KEY, token, nx=True, px=lock_ms):
        if time.monotonic() >= deadline:
            return 0
        time.sleep(0.02)
    total = 0
    try:
        for _ in range(max_batches):
            with session_factory() as session:
                rows = outbox.pending_outbox(session, batch)
                if not rows:
                    break
                pipe = client.pipeline(transaction=False)
                for row in rows:
                    pipe.xadd(
                        row.stream,
                        {"event": row.payload, streams.OUTBOX_ID_FIELD: str(row.id)},
                        maxlen=streams.STREAM_MAXLEN,
                        approximate=True,
                    )
                pipe.execute()
                outbox.mark_sent(session, [row.id for row in rows if row.id is not None])
                total += len(rows)
            if len(rows) < batch:
                break
    finally:
        client.eval(_RELEASE, 1, streams.RELAY_LOCK_KEY, token)
    if total:
        log.info("outbox_relayed", rows=total)
    return total
