"""The reconnecting stream loop survives its stream being deleted under a blocked read."""

from __future__ import annotations

import threading
import time
import uuid

import redis

from events.consumer import ReconnectingLoop


def test_deleted_stream_under_a_blocked_read_is_recreated_and_reading_goes_on(
    redis_url: str,
) -> None:
    stream, group = f"test:consumer:{uuid.uuid4().hex}", "g"
    received: list[bytes] = []

    def ensure_group(client: redis.Redis) -> None:
        try:
            client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def step(client: redis.Redis) -> None:
        reply = client.xreadgroup(group, "c1", {stream: ">"}, count=10, block=5000)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                received.append(fields[b"n"])
                client.xack(stream, group, entry_id)

    stop = threading.Event()
    loop = ReconnectingLoop(redis_url, step, stop=stop, on_connect=ensure_group, name="t")
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    admin = redis.Redis.from_url(redis_url)
    try:
        admin.xadd(stream, {"n": "1"})
        _wait(lambda: received == [b"1"])
        time.sleep(0.3)  # the loop is blocked in XREADGROUP again
        admin.delete(stream)  # Redis answers the blocked read with UNBLOCKED
        _wait(lambda: loop.reconnects >= 1)
        _wait(lambda: admin.exists(stream) == 1)  # on_connect recreated stream + group
        admin.xadd(stream, {"n": "2"})
        _wait(lambda: received == [b"1", b"2"])
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=10)
        admin.delete(stream)


def _wait(predicate, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
