"""The one follower of the fleet refresh stream, for the engine and ``lorafleet pull``.

Both need the same thing: every ``fleet.refresh`` entry for one base model, in order, from
the moment they start, and a signal to reconcile in full whenever they (re)connect, because
entries may have been trimmed or missed while they were away. Plain XREAD (no consumer
group): every engine and every pull sees every entry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import redis
import structlog

from events.consumer import ReconnectingLoop
from events.models import FleetRefresh, decode
from events.streams import REFRESH_STREAM

log = structlog.get_logger(__name__)


class RefreshFollower:
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

    @property
    def stop(self) -> threading.Event:
        return self.loop.stop

    def run(self) -> None:
        """Block until ``stop`` is set."""
        self.loop.run()

    def _connected(self, client: redis.Redis) -> None:
        if self.last_id is None:
            newest = client.xrevrange(REFRESH_STREAM, count=1)
            self.last_id = newest[0][0] if newest else "0-0"
        self.on_connect()

    def _step(self, client: redis.Redis) -> None:
        assert self.last_id is not None
        response = client.xread({REFRESH_STREAM: self.last_id}, count=100, block=self.block_ms)
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                self.last_id = entry_id
                try:
                    event = decode(fields)
                except ValueError as exc:
                    log.warning("refresh_event_malformed", entry_id=str(entry_id), error=str(exc))
                    continue
                if isinstance(event, FleetRefresh) and event.base_model == self.base_model:
                    self.on_event(event)
