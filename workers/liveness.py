"""Worker heartbeats and the dead-worker check: a killed worker's task messages come back in
seconds, not after the broker's visibility timeout.

Celery with ``acks_late`` keeps every message a worker node reserved in kombu's ``unacked``
hash until the node acknowledges it. A prefork child that dies is noticed by its node
(``reject_on_worker_lost`` requeues at once); a whole node killed with SIGKILL acknowledges
nothing, and its messages return only when kombu restores messages older than the
visibility timeout (``LORAFLEET_BROKER_VISIBILITY_TIMEOUT``, 2400 s: longer than any task may
run, so a live worker's long task is never handed out twice). This module closes that gap
without shortening the timeout:

* each node's main process records the delivery tag of every message it receives (reserved,
  running, or held for a retry countdown) and when, in ``lorafleet:worker:<id>:tags``, where
  ``<id>`` is the node name plus a boot id (a node restarted under the same name is a new
  id);
* a heartbeat thread refreshes ``lorafleet:worker:<id>:alive`` every
  ``LORAFLEET_WORKER_HEARTBEAT_S`` (5 s) with a TTL of ``LORAFLEET_WORKER_DEAD_AFTER_S``
  (15 s), and drops tags kombu no longer holds (acknowledged);
* the dead-worker check (at every heartbeat of every live node) finds registered nodes whose ``alive`` key expired and puts their messages that are
  still unacknowledged back on their queues, as kombu's ``restore_by_tag`` does, in one
  WATCH/MULTI transaction (a message is restored once however many nodes race), then forgets
  the node. A restored message keeps its delivery tag, so a tag counts as the dead node's
  only while kombu's delivery time for it (``unacked_index``) is not later than when the
  node received it: a message since delivered to another node is never taken from it.

A node judges others only once it has beaten for a full dead-after itself (after its start,
or after Redis came back): every other node has had the time to beat again, so an outage
of Redis does not make every node take every other for dead. So a killed node's work is
queued again at most ``dead after + heartbeat`` (20 s) after the kill when another node is
up, and at most that after its replacement started when it ran alone. The restored message is the very message the node held (same task id, same step
of the chain, ``redelivered`` set); every step is idempotent, so even a node wrongly taken
for dead (its heartbeat stalled past the TTL) costs repeated work, never a second version.
A node that finds itself forgotten re-registers and logs ``worker_taken_for_dead``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

import redis
import structlog

log = structlog.get_logger(__name__)

REGISTRY_KEY = "lorafleet:workers"  # hash: worker id -> JSON {host, pid, started}


def alive_key(worker_id: str) -> str:
    return f"lorafleet:worker:{worker_id}:alive"


def tags_key(worker_id: str) -> str:
    return f"lorafleet:worker:{worker_id}:tags"


def new_worker_id(hostname: str) -> str:
    """``<node name>/<boot id>``: unique per start of a node."""
    return f"{hostname}/{uuid.uuid4().hex[:12]}"


def register(client: redis.Redis, worker_id: str, dead_after_s: float) -> None:
    """Announce ``worker_id`` alive (the alive key first, so no checker sees it registered
    and not alive)."""
    client.set(alive_key(worker_id), str(time.time()), px=int(dead_after_s * 1000))
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    client.hset(REGISTRY_KEY, worker_id, json.dumps(info))


def beat(client: redis.Redis, worker_id: str, dead_after_s: float) -> bool:
    """Refresh the heartbeat; returns False when the node had been taken for dead (then it
    is registered again)."""
    client.set(alive_key(worker_id), str(time.time()), px=int(dead_after_s * 1000))
    if client.hexists(REGISTRY_KEY, worker_id):
        return True
    register(client, worker_id, dead_after_s)
    return False


def note_received(client: redis.Redis, worker_id: str, delivery_tag: str) -> None:
    """Record that this node holds the message ``delivery_tag`` since now (after kombu
    indexed its delivery: a later delivery of the same tag to another node, a restored
    message keeps its tag, is indexed later than this)."""
    client.hset(tags_key(worker_id), delivery_tag, repr(time.time()))


def _tags(client: redis.Redis, worker_id: str) -> dict[str, float]:
    return {
        (k.decode() if isinstance(k, bytes) else k): float(v)
        for k, v in client.hgetall(tags_key(worker_id)).items()
    }


def _ours(delivered_at: float | None, received_at: float) -> bool:
    """Whether kombu's delivery of a tag (its ``unacked_index`` score) is the one this node
    received, not a later redelivery to another node."""
    return delivered_at is not None and delivered_at <= received_at


def prune(client: redis.Redis, worker_id: str, unacked_index_key: str) -> int:
    """Forget this node's tags kombu no longer holds for it (acknowledged, or restored and
    delivered elsewhere); returns how many are still held."""
    tags = _tags(client, worker_id)
    if not tags:
        return 0
    pipe = client.pipeline(transaction=False)
    for tag in tags:
        pipe.zscore(unacked_index_key, tag)
    delivered = pipe.execute()
    gone = [
        tag
        for (tag, received_at), at in zip(tags.items(), delivered, strict=True)
        if not _ours(at, received_at)
    ]
    if gone:
        client.hdel(tags_key(worker_id), *gone)
    return len(tags) - len(gone)


def restore_if_held(client: redis.Redis, qos: Any, tag: str, received_at: float) -> bool:
    """Put the message ``tag`` back on its queue if kombu still holds the delivery received
    at ``received_at``; kombu's own ``restore_by_tag`` plus that check, in one WATCH/MULTI
    transaction (a message is restored once, however many checkers race, and never from
    under the node it was delivered to since)."""
    from kombu.utils.json import loads

    def transaction(pipe: Any) -> bool:
        raw = pipe.hget(qos.unacked_key, tag)
        delivered_at = pipe.zscore(qos.unacked_index_key, tag)
        pipe.multi()
        if raw is None or not _ours(delivered_at, received_at):
            return False
        qos._remove_from_indices(tag, pipe)
        message, exchange, routing_key = loads(raw.decode() if isinstance(raw, bytes) else raw)
        qos.channel._do_restore_message(message, exchange, routing_key, pipe, False)
        return True

    return bool(
        client.transaction(
            transaction, qos.unacked_key, qos.unacked_index_key, value_from_callable=True
        )
    )


def recover_dead(client: redis.Redis, qos: Any, *, me: str | None = None) -> dict[str, int]:
    """Restore the unacknowledged messages of every registered node whose heartbeat
    expired, and forget those nodes. ``qos`` is a kombu Redis channel's QoS (its key names;
    a restored message goes to the front of its queue at its priority). Returns counts of
    ``dead`` nodes and ``restored`` messages."""
    counts = {"dead": 0, "restored": 0}
    for raw in client.hkeys(REGISTRY_KEY):
        worker_id = raw.decode() if isinstance(raw, bytes) else raw
        if worker_id == me or client.exists(alive_key(worker_id)):
            continue
        tags = _tags(client, worker_id)
        restored = sum(restore_if_held(client, qos, tag, at) for tag, at in tags.items())
        # Forget the node only once its messages are back (a crash before this line leaves
        # it registered, and the next check restores whatever is still unacknowledged).
        client.delete(tags_key(worker_id))
        client.hdel(REGISTRY_KEY, worker_id)
        counts["dead"] += 1
        counts["restored"] += restored
        log.warning("dead_worker_recovered", worker=worker_id, restored=restored, held=len(tags))
    return counts


def recover_with(celery_app: Any) -> dict[str, int]:
    """One ``recover_dead`` over a broker connection of ``celery_app`` (its transport
    options: queue priorities and key names), from any process."""
    client = redis.Redis.from_url(
        celery_app.conf.broker_url, socket_timeout=5, socket_connect_timeout=2
    )
    try:
        with celery_app.connection_for_write() as conn:
            return recover_dead(client, conn.default_channel.qos)
    finally:
        client.close()


class Heartbeat:
    """The heartbeat of one worker node (its main process): records received messages,
    beats, prunes and runs the dead-worker check on a daemon thread."""

    def __init__(self, celery_app: Any, hostname: str, interval_s: float, dead_after_s: float):
        self.app = celery_app
        self.worker_id = new_worker_id(hostname)
        self.interval_s, self.dead_after_s = interval_s, dead_after_s
        self.client = redis.Redis.from_url(
            celery_app.conf.broker_url, socket_timeout=5, socket_connect_timeout=2
        )
        self._stop = threading.Event()
        self._healthy_since: float | None = None  # monotonic time of the first good beat

    def start(self) -> None:
        register(self.client, self.worker_id, self.dead_after_s)
        threading.Thread(target=self._run, name="lorafleet-heartbeat", daemon=True).start()
        log.info("worker_heartbeat_started", worker=self.worker_id, interval_s=self.interval_s)

    def stop(self) -> None:
        """A clean stop: the node restores or acknowledges its own messages (kombu), so it
        unregisters at once."""
        self._stop.set()
        try:
            self.client.hdel(REGISTRY_KEY, self.worker_id)
            self.client.delete(alive_key(self.worker_id), tags_key(self.worker_id))
        except redis.RedisError:
            pass

    def received(self, delivery_tag: str | None) -> None:
        if not delivery_tag:
            return
        try:
            note_received(self.client, self.worker_id, delivery_tag)
        except redis.RedisError as exc:  # the visibility timeout still brings it back
            log.warning("worker_tag_not_recorded", tag=delivery_tag, error=str(exc))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - Redis down: try again next beat
                self._healthy_since = None
                log.warning("worker_heartbeat_failed", worker=self.worker_id, error=str(exc))

    def tick(self) -> dict[str, int]:
        if not beat(self.client, self.worker_id, self.dead_after_s):
            log.warning("worker_taken_for_dead", worker=self.worker_id)
        now = time.monotonic()
        if self._healthy_since is None:
            self._healthy_since = now
        with self.app.connection_for_write() as conn:
            qos = conn.default_channel.qos
            prune(self.client, self.worker_id, qos.unacked_index_key)
            if now - self._healthy_since < self.dead_after_s:
                # Just started, or Redis just came back: the other nodes may not have beaten
                # since; judge them only once each has had a full dead-after to do so.
                return {"dead": 0, "restored": 0}
            return recover_dead(self.client, qos, me=self.worker_id)


_heartbeat: Heartbeat | None = None


def install(celery_app: Any, interval_s: float, dead_after_s: float) -> None:
    """Connect the worker signals: start the heartbeat when a node is ready, record every
    message it receives, unregister on a clean shutdown. Only a worker's main process
    fires these; importing this elsewhere costs nothing."""
    from celery import signals

    def on_ready(sender: Any = None, **_: Any) -> None:
        global _heartbeat
        hostname = getattr(sender, "hostname", None) or socket.gethostname()
        _heartbeat = Heartbeat(celery_app, hostname, interval_s, dead_after_s)
        _heartbeat.start()

    def on_received(request: Any = None, **_: Any) -> None:
        if _heartbeat is not None and request is not None:
            message = getattr(request, "message", None)
            _heartbeat.received(getattr(message, "delivery_tag", None))

    def on_shutdown(**_: Any) -> None:
        if _heartbeat is not None:
            _heartbeat.stop()

    signals.worker_ready.connect(on_ready, weak=False)
    signals.task_received.connect(on_received, weak=False)
    signals.worker_shutdown.connect(on_shutdown, weak=False)
