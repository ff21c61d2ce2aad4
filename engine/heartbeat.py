"""The engine's heartbeat: every ``LORAFLEET_ENGINE_HEARTBEAT_SECONDS`` it reports its id,
base model, applied generation and residency (``events.heartbeat``), with a TTL of three
intervals, so the registry's ``GET /v1/fleet/engines`` drops an engine that died."""

from __future__ import annotations

import threading
from collections.abc import Callable

import redis
import structlog

from events.heartbeat import EngineHeartbeat, publish_heartbeat

log = structlog.get_logger(__name__)

TTL_INTERVALS = 3  # a heartbeat outlives two missed ones


def run_heartbeat(
    redis_url: str,
    beat: Callable[[float], EngineHeartbeat],
    interval: float,
    stop: threading.Event,
) -> None:
    """Publish ``beat(ttl)`` now and every ``interval`` seconds until ``stop``; a Redis
    error is logged and retried at the next beat."""
    ttl = interval * TTL_INTERVALS
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        while True:
            try:
                publish_heartbeat(client, beat(ttl))
            except redis.RedisError as exc:
                log.warning("heartbeat_failed", error=str(exc))
            if stop.wait(interval):
                return
    finally:
        client.close()
