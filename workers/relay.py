"""The outbox relay: publishes events the registry committed to the outbox table.

The registry writes each ``FleetRefresh`` / ``AdapterStatusChanged`` row in the same
transaction as the change it announces; this relay XADDs pending rows to their stream and
then marks them sent. Delivery is at-least-once: a crash between XADD and ``mark_sent``
publishes the row again, so every entry carries ``outbox_id`` for consumers to dedup (and
refresh events are hints carrying a generation anyway).

Who relays: whoever just committed outbox rows (the ingest task, right after its commit)
and beat's periodic tick, which catches everything else (API commits, a relay that died).
One relay publishes at a time (a Redis lock, so rows go out once and in id order); a caller
that finds the lock taken does not wait for it: it leaves a *kick* (``RELAY_KICK_KEY``) and
returns, and the holder, which clears the kick before each read of the table, sees it at
release and reads again. A row committed before its kick is therefore read by the holder
or by the kicker itself; none waits for a later tick.
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

# Release the lock unless a kick arrived since the holder's last read: then keep it (and
# its expiry fresh) and tell the holder to read again. Compare-and-delete, so a relay whose
# lock expired never releases another relay's lock. 1 released, 2 read again, 0 not ours.
_RELEASE = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('exists', KEYS[2]) == 1 then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 2
end
redis.call('del', KEYS[1])
return 1
"""
MAX_PASSES = 100  # a holder kicked again and again hands over to the next tick after this

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
    """Publish pending outbox rows in id order and mark them sent; returns how many this
    call published.

    Leaves a kick first, so when another relay holds the lock that holder reads the table
    again before releasing it (and publishes the caller's committed rows); the caller then
    returns 0 at once, or, with ``wait_s``, waits up to that long for the lock and relays
    whatever is still pending. A row is marked sent only after its XADD returned.
    """
    token = uuid.uuid4().hex
    client.set(streams.RELAY_KICK_KEY, token, px=lock_ms)
    deadline = time.monotonic() + wait_s
    while not client.set(streams.RELAY_LOCK_KEY, token, nx=True, px=lock_ms):
        if time.monotonic() >= deadline:
            return 0
        time.sleep(0.02)
    total = 0
    released = False
    try:
        for _ in range(MAX_PASSES):
            client.delete(streams.RELAY_KICK_KEY)  # before reading: a later kick is seen
            total += _publish_pending(session_factory, client, batch, max_batches)
            keys = (streams.RELAY_LOCK_KEY, streams.RELAY_KICK_KEY)
            if client.eval(_RELEASE, 2, *keys, token, lock_ms) != 2:
                released = True
                break
    finally:
        if not released:
            client.eval(_RELEASE_ANYWAY, 1, streams.RELAY_LOCK_KEY, token)
    if total:
        log.info("outbox_relayed", rows=total)
    return total


_RELEASE_ANYWAY = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def _publish_pending(
    session_factory: SessionFactory, client: redis.Redis, batch: int, max_batches: int
) -> int:
    """XADD up to ``max_batches`` batches of pending rows, marking each batch sent after its
    XADDs returned; returns how many rows."""
    total = 0
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
    return total
