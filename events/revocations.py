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

from pydantic import Field

from events.consumer import StreamTail
from events.models import Event, event_json
from events.streams import REVOCATIONS_STREAM


class TokenRevoked(Event):
    """``token.revoked``: registry token ``token_id`` no longer authenticates anywhere."""

    TYPE: ClassVar[str] = "token.revoked"
    type: Literal["token.revoked"] = "token.revoked"
    version: Literal[1] = 1
    token_id: int = Field(ge=1)
    namespace: str | None = Field(default=None, max_length=63)


def decode_revocation(fields: dict[bytes | str, bytes | str]) -> TokenRevoked:
    """Parse one stream entry; ``ValueError`` for anything malformed or oversized."""
    return TokenRevoked.model_validate_json(event_json(fields))


class RevocationFollower(StreamTail):
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
        super().__init__(
            redis_url,
            REVOCATIONS_STREAM,
            decode_revocation,
            on_revoked,
            on_connect,
            on_first_connect=False,
            malformed="revocation_malformed",
            stop=stop,
            block_ms=block_ms,
            name=name,
        )
