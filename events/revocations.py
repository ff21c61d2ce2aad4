"""Token revocations: the registry tells every engine to forget a token at once.

``TokenRevoked`` travels on ``lorafleet:auth:revocations`` (written through the outbox in
the transaction that revokes the token, relayed like every outbox row). Engines cache the
registry's answer about a token for a bounded time; this event makes them drop it before
that time runs out. Like refresh events it is a hint with a safe fallback: an engine that
missed it still re-asks the registry when its cache entry ages out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import ClassVar, Literal

import redis
import structlog
from pydantic import Field

from events.consumer import ReconnectingLoop
from events.models import MAX_EVENT_BYTES, Event
from events.streams import REVOCATIONS_STREAM

log = structlog.get_logger(__name__)


class TokenRevoked(Event):
    """``token.revoked``: registry token ``token_id`` no longer authenticates anywhere."""

    TYPE: ClassVar[str] = "token.revoked"
    type: Literal["token.revoked"] = "token.revoked"
    version: Literal[1] = 1
    token_id: int = Field(ge=1)
    namespace: str | None = Field(default=None, max_length=63)


def decode_revocation(fields: dict[bytes | str, bytes | str]) -> TokenRevoked:
    """Parse one stream entry; ``ValueError`` for anything malformed or oversized."""
    raw = fields.get("event", fields.get(b"event"))
    if raw is None:
        raise ValueError("stream entry has no 'event' field")
    if isinstance(raw, str):
        raw = raw.encode()
    if len(raw) > MAX_EVENT_BYTES:
        raise ValueError(f"event is {len(raw)} bytes, more than the {MAX_EVENT_BYTES} allowed")
    return TokenRevoked.model_validate_json(raw)


class RevocationFollower:
    """Calls ``on_revoked`` with every ``TokenRevoked`` published after it first connects,
    and ``on_connect()`` after every (re)connect (the engine then drops its whole token
    cache: revocations may have been missed while it was away). Plain XREAD; reconnects
    through ``events.consumer.ReconnectingLoop``; a malformed entry is logged and skipped."""

    def __init__(
        self,
        redis_url: str,
        on_revoked: Callable[[TokenRevoked], None],
        on_connect: Callable[[], None],
        *,
        stop: threading.Event | None = None,
        block_ms: int = 500,
        name: str = "revocation-follower",
    ) -> None:
        self.on_revoked = on_revoked
        self.on_connect = on_connect
        self.block_ms = block_ms
        self.last_id: bytes | str | None = None
        self.loop = ReconnectingLoop(
            redis_url,
            self._step,
            stop=stop,
            on_connect=self._connected,
            name=name,
            socket_timeout=max(5.0, block_ms / 1000 * 5),
        )

    def run(self) -> None:
        """Block until ``stop`` is set."""
        self.loop.run()

    def _connected(self, client: redis.Redis) -> None:
        if self.last_id is None:
            newest = client.xrevrange(REVOCATIONS_STREAM, count=1)
            self.last_id = newest[0][0] if newest else "0-0"
        else:
            self.on_connect()  # reconnected: something may have been missed

    def _step(self, client: redis.Redis) -> None:
        assert self.last_id is not None
        response = client.xread({REVOCATIONS_STREAM: self.last_id}, count=100, block=self.block_ms)
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                self.last_id = entry_id
                try:
                    event = decode_revocation(fields)
                except ValueError as exc:
                    log.warning("revocation_malformed", entry_id=str(entry_id), error=str(exc))
                    continue
                self.on_revoked(event)
