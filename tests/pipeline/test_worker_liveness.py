"""Worker heartbeats and the dead-worker check (``workers/liveness.py``, issue 12 class 9).

Real Redis, real kombu channels and real Celery worker processes: a node SIGKILLed while it
holds a message (here a retry-countdown task, held unacknowledged in the node's memory) has
that message handed to another node once its heartbeat expires, not after the 2400 s
visibility timeout; a live node's messages are never restored; a node taken for dead
registers again. The full pipeline under the same fault, at production settings, is
``tests/chaos/test_worker_recovery.py``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support.processes import WORKER_READY, Proc, process_env, wait_for, worker_argv
from support.services import flushed_redis_db, redis_db_url

from events import streams
from workers import liveness
from workers.celery_app import create_app
from workers.settings import WorkerSettings

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def redis_url() -> Iterator[str]:
    with flushed_redis_db(redis_db_url(6)) as url:
        yield url


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def _app(redis_url: str):
    return create_app(WorkerSettings(), redis_url=redis_url)


@pytest.fixture
def holder(redis_url: str) -> Iterator:
    """A broker connection that takes messages without acknowledging them, as a worker node
    does; never closed before the test ends (closing would give them back, a dead node
    does not)."""
    conn = _app(redis_url).connection_for_write()
    yield conn
    conn.release()


def _hold_one(holder, queue: str) -> str:
    """Take one message of ``queue`` unacknowledged; returns its delivery tag (now in
    kombu's ``unacked`` hash)."""
    message = wait_for(lambda: holder.default_channel.basic_get(queue), 10, "a message")
    return message.delivery_tag


def _queued(client: redis.Redis, queue: str) -> int:
    return sum(client.llen(k) for k in client.scan_iter(f"{queue}*") if client.type(k) == b"list")


def test_a_dead_nodes_unacked_messages_are_restored_and_a_live_nodes_are_not(
    redis_url, client, holder
):
    app = _app(redis_url)
    queue = streams.FLEET_QUEUE
    app.send_task("workers.tasks.relay", queue=queue)
    app.send_task("workers.tasks.relay", queue=queue)
    dead_tag, live_tag = _hold_one(holder, queue), _hold_one(holder, queue)
    assert client.hlen("unacked") == 2 and _queued(client, queue) == 0

    dead, live = "dead@host/aaa", "live@host/bbb"
    for worker_id, tag in ((dead, dead_tag), (live, live_tag)):
        liveness.register(client, worker_id, dead_after_s=30)
        liveness.note_received(client, worker_id, tag)
    client.delete(liveness.alive_key(dead))  # its heartbeat expired
    # A tag the dead node recorded but had acknowledged is not restored (nothing to restore).
    liveness.note_received(client, dead, "already-acked")

    assert liveness.recover_with(app) == {"dead": 1, "restored": 1}
    assert not client.hexists("unacked", dead_tag) and client.hexists("unacked", live_tag)
    assert _queued(client, queue) == 1
    assert not client.hexists(liveness.REGISTRY_KEY, dead)
    assert not client.exists(liveness.tags_key(dead))
    assert client.hexists(liveness.REGISTRY_KEY, live)
    # The restored message is the same one, marked redelivered, at the front of its queue.
    with app.connection_for_write() as conn:
        again = conn.default_channel.basic_get(queue)
        assert again.delivery_tag == dead_tag and again.delivery_info["redelivered"]
    # A second check finds nothing more to do (racing checkers restore a message once).
    assert liveness.recover_with(app) == {"dead": 0, "restored": 0}


def test_a_message_since_delivered_to_another_node_is_not_taken_from_it(redis_url, client, holder):
    """A restored message keeps its delivery tag: a dead node that once held the tag (and
    whose record of it outlived a redelivery) must not take it from its new holder."""
    app = _app(redis_url)
    app.send_task("workers.tasks.relay", queue=streams.FLEET_QUEUE)
    tag = _hold_one(holder, streams.FLEET_QUEUE)  # delivered now, to a live node
    old = "old@host/ddd"
    liveness.register(client, old, dead_after_s=30)
    client.hset(liveness.tags_key(old), tag, repr(time.time() - 100))  # received long ago
    client.delete(liveness.alive_key(old))
    assert liveness.recover_with(app) == {"dead": 1, "restored": 0}
    assert client.hexists("unacked", tag)
    assert _queued(client, streams.FLEET_QUEUE) == 0


def test_prune_forgets_acknowledged_tags_and_a_node_taken_for_dead_registers_again(
    redis_url, client, holder
):
    app = _app(redis_url)
    app.send_task("workers.tasks.relay", queue=streams.FLEET_QUEUE)
    held = _hold_one(holder, streams.FLEET_QUEUE)
    me = "me@host/ccc"
    liveness.register(client, me, dead_after_s=30)
    for tag in (held, "acked-1", "acked-2"):
        liveness.note_received(client, me, tag)
    assert liveness.prune(client, me, "unacked_index") == 1
    assert set(client.hkeys(liveness.tags_key(me))) == {held.encode()}
    assert liveness.beat(client, me, dead_after_s=30) is True
    client.hdel(liveness.REGISTRY_KEY, me)  # another node took it for dead
    assert liveness.beat(client, me, dead_after_s=30) is False
    assert client.hexists(liveness.REGISTRY_KEY, me) and client.exists(liveness.alive_key(me))
    info = json.loads(client.hget(liveness.REGISTRY_KEY, me))
    assert set(info) == {"host", "pid", "started"}


RECEIVED = re.compile(r"Task workers\.tasks\.relay\[([0-9a-f-]{36})\] received")


def test_a_killed_node_s_held_message_goes_to_another_node_within_its_heartbeat(
    redis_url, client, tmp_path: Path
):
    env = process_env(
        {
            "LORAFLEET_REDIS_URL": redis_url,
            "LORAFLEET_HOME": str(tmp_path / "home"),
            "LORAFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}",
            # Short liveness timings to keep `make test` quick; the visibility timeout stays
            # at its 2400 s default (the chaos scenario runs every default).
            "LORAFLEET_WORKER_HEARTBEAT_S": "1",
            "LORAFLEET_WORKER_DEAD_AFTER_S": "3",
        }
    )
    env.pop("LORAFLEET_BROKER_VISIBILITY_TIMEOUT", None)
    logs = tmp_path / "logs"
    logs.mkdir()
    a = Proc("node-a", worker_argv("livea"), env, logs)
    b = Proc("node-b", worker_argv("liveb"), env, logs)
    try:
        a.start(WORKER_READY)
        wait_for(lambda: client.hlen(liveness.REGISTRY_KEY) == 1, 20, "node a registered")
        # A task with a countdown: node a holds it, unacknowledged, until its ETA.
        task_id = _app(redis_url).send_task("workers.tasks.relay", countdown=600).id
        wait_for(lambda: task_id in RECEIVED.findall(a.log_path.read_text()), 20, "a received")
        (a_id,) = [k.decode() for k in client.hkeys(liveness.REGISTRY_KEY)]
        wait_for(lambda: client.hlen(liveness.tags_key(a_id)) == 1, 10, "a's tag recorded")
        b.start(WORKER_READY)
        a.kill9()
        killed = time.monotonic()
        wait_for(lambda: task_id in RECEIVED.findall(b.log_path.read_text()), 30, "b received it")
        waited = time.monotonic() - killed
        assert waited < 3 + 1 + 5, waited  # dead after + a heartbeat (+ slack), not 2400 s
        assert not client.hexists(liveness.REGISTRY_KEY, a_id)
        assert "dead_worker_recovered" in b.log_path.read_text()
    finally:
        for proc in (b, a):
            proc.stop()
    # A clean stop unregisters the node.
    assert client.hlen(liveness.REGISTRY_KEY) == 0
