"""The dead-letter stream of the ingest pipeline: send, list and replay.

A dead letter keeps every field of the original entry, plus why and when it was
dead-lettered (``events.streams.DLQ_FIELDS``). Moving an entry is atomic (MULTI): it is
never both acknowledged and lost, nor on both streams after a replay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis

from events import streams


@dataclass(frozen=True)
class DeadLetter:
    """One entry of the DLQ stream."""

    id: str
    reason: str
    source_id: str | None
    source_stream: str | None
    deliveries: int | None
    at: str | None
    fields: dict[str, str] = field(default_factory=dict)  # the original entry's fields

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "reason": self.reason,
            "source_id": self.source_id,
            "source_stream": self.source_stream,
            "deliveries": self.deliveries,
            "at": self.at,
            "fields": self.fields,
        }


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _original_fields(fields: dict[bytes | str, bytes | str]) -> dict[str, str]:
    """The entry's own fields, without DLQ bookkeeping from an earlier dead-lettering."""
    return {_text(k): _text(v) for k, v in fields.items() if _text(k) not in streams.DLQ_FIELDS}


def dead_letter(
    client: redis.Redis,
    *,
    entry_id: bytes | str,
    fields: dict[bytes | str, bytes | str],
    reason: str,
    deliveries: int | None = None,
    source_stream: str = streams.JOBS_STREAM,
    group: str | None = streams.INGEST_GROUP,
) -> str:
    """Copy an entry to the DLQ with ``reason`` and, in the same MULTI, XACK it in ``group``.

    Returns the DLQ entry id. Guarantees the entry is acknowledged only if the dead letter
    was written.
    """
    letter = _original_fields(fields)
    letter[streams.DLQ_REASON_FIELD] = reason[:4000]
    letter[streams.DLQ_SOURCE_ID_FIELD] = _text(entry_id)
    letter[streams.DLQ_SOURCE_STREAM_FIELD] = source_stream
    letter[streams.DLQ_AT_FIELD] = datetime.now(UTC).isoformat()
    if deliveries is not None:
        letter[streams.DLQ_DELIVERIES_FIELD] = str(deliveries)
    pipe = client.pipeline(transaction=True)
    pipe.xadd(streams.JOBS_DLQ_STREAM, letter, maxlen=streams.STREAM_MAXLEN, approximate=True)
    if group is not None:
        pipe.xack(source_stream, group, entry_id)
    dlq_id, *_ = pipe.execute()
    return _text(dlq_id)


def _letter(entry_id: bytes | str, raw: dict[bytes | str, bytes | str]) -> DeadLetter:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    deliveries = fields.get(streams.DLQ_DELIVERIES_FIELD)
    return DeadLetter(
        id=_text(entry_id),
        reason=fields.get(streams.DLQ_REASON_FIELD, ""),
        source_id=fields.get(streams.DLQ_SOURCE_ID_FIELD),
        source_stream=fields.get(streams.DLQ_SOURCE_STREAM_FIELD),
        deliveries=int(deliveries) if deliveries and deliveries.isdigit() else None,
        at=fields.get(streams.DLQ_AT_FIELD),
        fields=_original_fields(raw),
    )


def list_dead_letters(
    client: redis.Redis, *, count: int = 100, start: str = "-"
) -> list[DeadLetter]:
    """The oldest ``count`` dead letters from ``start`` (an entry id, inclusive)."""
    return [
        _letter(i, f) for i, f in client.xrange(streams.JOBS_DLQ_STREAM, start, "+", count=count)
    ]


def get_dead_letter(client: redis.Redis, dlq_id: str) -> DeadLetter | None:
    """The dead letter with id ``dlq_id``, or None."""
    entries = client.xrange(streams.JOBS_DLQ_STREAM, dlq_id, dlq_id, count=1)
    return _letter(*entries[0]) if entries else None


def replay(client: redis.Redis, dlq_id: str, *, event_json: str | None = None) -> str:
    """Re-drive a dead letter: XADD its original fields (``event`` replaced by ``event_json``
    when given, e.g. a corrected event) to the jobs stream and XDEL it from the DLQ,
    atomically. Returns the new entry id; KeyError if there is no such dead letter."""
    letter = get_dead_letter(client, dlq_id)
    if letter is None:
        raise KeyError(dlq_id)
    fields = dict(letter.fields)
    if event_json is not None:
        fields["event"] = event_json
    pipe = client.pipeline(transaction=True)
    # Only the jobs stream has a DLQ; never let a stored field pick the target stream.
    pipe.xadd(streams.JOBS_STREAM, fields, maxlen=streams.STREAM_MAXLEN, approximate=True)
    pipe.xdel(streams.JOBS_DLQ_STREAM, dlq_id)
    new_id, _ = pipe.execute()
    return _text(new_id)
