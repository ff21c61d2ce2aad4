"""The one reconnecting loop for Redis stream consumers (ingest bridge, engine refresh).

Reconnect and back-off are declared here once; a consumer only supplies ``step``: read a
batch (XREADGROUP / XREAD with a block timeout) and handle it.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import redis
import structlog

log = structlog.get_logger(__name__)

TRANSIENT_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    ConnectionResetError,
)


class ReconnectingLoop:
    """Call ``step(client)`` until ``stop`` is set, surviving Redis outages.

    On a transient Redis error the client is dropped, the loop sleeps with exponential
    back-off and full jitter (``initial_backoff`` .. ``max_backoff`` seconds), reconnects and
    calls ``on_connect(client)`` (e.g. to recreate a consumer group) before stepping again.
    A stream or group deleted under a blocked read (``UNBLOCKED``/``NOGROUP``) is handled the
    same way. Any other exception propagates: a bug must not be retried forever.
    """

    def __init__(
        self,
        redis_url: str,
        step: Callable[[redis.Redis], None],
        *,
        stop: threading.Event | None = None,
        on_connect: Callable[[redis.Redis], None] | None = None,
        name: str = "stream-consumer",
        initial_backoff: float = 0.2,
        max_backoff: float = 5.0,
        socket_timeout: float = 30.0,
    ) -> None:
        self.redis_url = redis_url
        self.step = step
        self.stop = stop or threading.Event()
        self.on_connect = on_connect
        self.name = name
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.socket_timeout = socket_timeout
        self.reconnects = 0

    def _connect(self) -> redis.Redis:
        client = redis.Redis.from_url(
            self.redis_url, socket_timeout=self.socket_timeout, socket_connect_timeout=5
        )
        client.ping()
        if self.on_connect is not None:
            self.on_connect(client)
        return client

    def run(self) -> None:
        """Run until ``stop`` is set. Blocking reads inside ``step`` should use a block
        timeout well under ``socket_timeout`` so a stop request is noticed promptly."""
        backoff = self.initial_backoff
        client: redis.Redis | None = None
        while not self.stop.is_set():
            try:
                if client is None:
                    client = self._connect()
                    log.info(
                        "stream_consumer_connected", consumer=self.name, url=_redact(self.redis_url)
                    )
                self.step(client)
                backoff = self.initial_backoff
            except (*TRANSIENT_REDIS_ERRORS, redis.ResponseError) as exc:
                if isinstance(exc, redis.ResponseError) and not _lost_stream(exc):
                    raise
                self.reconnects += 1
                log.warning(
                    "stream_consumer_disconnected",
                    consumer=self.name,
                    error=str(exc),
                    retry_in=round(backoff, 2),
                )
                if client is not None:
                    client.close()
                client = None
                self.stop.wait(random.uniform(0, backoff))
                backoff = min(self.max_backoff, backoff * 2)
        if client is not None:
            client.close()


class StreamTail:
    """Follow one stream from the newest entry there at the first connect, for as long as
    ``stop`` is unset: plain XREAD (no consumer group: every follower sees every entry),
    each entry decoded by ``decode`` and handed to ``on_entry``; an entry ``decode`` refuses
    (``ValueError``) is logged as ``malformed`` and skipped, never fatal. ``on_connect()`` runs
    after every reconnect, and after the first connect too when ``on_first_connect``.
    Reconnects through ``ReconnectingLoop``."""

    def __init__(
        self,
        redis_url: str,
        stream: str,
        decode: Callable[[dict], Any],
        on_entry: Callable[[Any], None],
        on_connect: Callable[[], None],
        *,
        on_first_connect: bool,
        malformed: str,
        stop: threading.Event | None = None,
        block_ms: int = 1000,
        name: str,
    ) -> None:
        self.stream, self.decode, self.on_entry = stream, decode, on_entry
        self.on_connect, self.on_first_connect = on_connect, on_first_connect
        self.malformed, self.block_ms = malformed, block_ms
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
        first = self.last_id is None
        if first:
            newest = client.xrevrange(self.stream, count=1)
            self.last_id = newest[0][0] if newest else "0-0"
        if not first or self.on_first_connect:
            self.on_connect()

    def _step(self, client: redis.Redis) -> None:
        assert self.last_id is not None
        response = client.xread({self.stream: self.last_id}, count=100, block=self.block_ms)
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                self.last_id = entry_id
                try:
                    event = self.decode(fields)
                except ValueError as exc:
                    log.warning(self.malformed, entry_id=str(entry_id), error=str(exc))
                    continue
                self.on_entry(event)


def _lost_stream(exc: redis.ResponseError) -> bool:
    """The stream (or its group) vanished under a blocked read: someone deleted the key, or
    Redis restarted without it. Reconnecting reruns ``on_connect``, which recreates them."""
    message = str(exc)
    return message.startswith("UNBLOCKED") or message.startswith("NOGROUP")


def _redact(url: str) -> str:
    """Hide a password in a Redis URL for logs."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
