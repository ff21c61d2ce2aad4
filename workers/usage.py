"""Folding the engines' usage flushes (``lorafleet:usage``) into the registry's hourly buckets.

Consumer group ``lorafleet-usage``: an entry is acknowledged only after its fold committed,
so a worker that dies mid-way leaves it pending; the next fold reclaims entries idle longer
than ``reclaim_idle_ms`` (XAUTOCLAIM) and folds them again, which ``store.usage.fold_flush``
makes harmless ((engine id, flush id) counts once). A malformed entry is logged and
acknowledged: it can never become valid.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from contextlib import AbstractContextManager

import redis
import structlog
from sqlmodel import Session

from events.streams import USAGE_GROUP, USAGE_STREAM
from events.usage import decode_usage
from store.usage import fold_flush

log = structlog.get_logger(__name__)

SessionFactory = Callable[[], AbstractContextManager[Session]]


def fold_usage(
    session_factory: SessionFactory,
    client: redis.Redis,
    *,
    batch: int = 200,
    max_batches: int = 50,
    reclaim_idle_ms: int = 60_000,
) -> int:
    """Fold pending usage flushes; returns how many were new (not replays)."""
    _ensure_group(client)
    consumer = f"{socket.gethostname()}-usage"
    folded = 0
    _, claimed, *_ = client.xautoclaim(
        USAGE_STREAM, USAGE_GROUP, consumer, reclaim_idle_ms, "0-0", count=batch
    )
    folded += _fold_entries(session_factory, client, claimed)
    for _ in range(max_batches):
        response = client.xreadgroup(USAGE_GROUP, consumer, {USAGE_STREAM: ">"}, count=batch)
        entries = [e for _stream, items in response or [] for e in items]
        if not entries:
            break
        folded += _fold_entries(session_factory, client, entries)
    if folded:
        log.info("usage_folded", flushes=folded)
    return folded


def _fold_entries(session_factory: SessionFactory, client: redis.Redis, entries: list) -> int:
    folded = 0
    for entry_id, fields in entries:
        if not fields:  # trimmed away while pending
            client.xack(USAGE_STREAM, USAGE_GROUP, entry_id)
            continue
        try:
            flush = decode_usage(fields)
        except ValueError as exc:
            log.warning("usage_flush_malformed", entry_id=str(entry_id), error=str(exc)[:500])
            client.xack(USAGE_STREAM, USAGE_GROUP, entry_id)
            continue
        with session_factory() as session:
            folded += fold_flush(session, flush)
        client.xack(USAGE_STREAM, USAGE_GROUP, entry_id)  # only after the fold committed
    return folded


def _ensure_group(client: redis.Redis) -> None:
    try:
        client.xgroup_create(USAGE_STREAM, USAGE_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
