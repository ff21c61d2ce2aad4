"""The one follower of the fleet refresh stream, for the engine and ``lorafleet pull``.

Both need the same thing: every ``fleet.refresh`` entry for one base model, in order, from
the moment they start, and a signal to reconcile in full whenever they (re)connect, because
entries may have been trimmed or missed while they were away. Plain XREAD (no consumer
group): every engine and every pull sees every entry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from events.consumer import StreamTail
from events.models import FleetRefresh, decode
from events.streams import REFRESH_STREAM


class RefreshFollower(StreamTail):
    """Reads the refresh stream from the last id it saw and calls ``on_event`` with each
    ``FleetRefresh`` for ``base_model``; calls ``on_connect()`` after every (re)connect.

    The first connect starts after the newest entry already there (``on_connect``'s full
    reconciliation covers what came before). A malformed entry is logged and skipped, never
    fatal. Reconnects through ``events.consumer.ReconnectingLoop``.
    """

    def __init__(
        self,
        redis_url: str,
        base_model: str,
        on_event: Callable[[FleetRefresh], None],
        on_connect: Callable[[], None],
        *,
        stop: threading.Event | None = None,
        block_ms: int = 1000,
        name: str = "refresh-follower",
    ) -> None:
        self.base_model = base_model
        self.on_event = on_event
        super().__init__(
            redis_url,
            REFRESH_STREAM,
            decode,
            self._deliver,
            on_connect,
            on_first_connect=True,
            malformed="refresh_event_malformed",
            stop=stop,
            block_ms=block_ms,
            name=name,
        )

    def _deliver(self, event: object) -> None:
        if isinstance(event, FleetRefresh) and event.base_model == self.base_model:
            self.on_event(event)
