"""The outbox relay never makes a committer wait for its lock, and never strands a row.

Real PostgreSQL (the rows, ``SKIP LOCKED``) and real Redis (the lock and the kick). A
caller that finds the lock taken returns at once; the holder reads the table again before
it lets go, so a row committed before its caller's kick is published by one of them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session
from support.services import fresh_postgres_database

from events import streams
from store.db import make_engine, session_scope, upgrade
from store.models import OutboxRow
from store.outbox import pending_outbox
from workers.relay import relay_outbox

STREAM = f"{streams.PREFIX}:test:relay-kick"


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with fresh_postgres_database("lorafleet_relay") as url:
        upgrade(url)
        engine = make_engine(url)
        yield engine
        engine.dispose()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.delete(STREAM, streams.RELAY_LOCK_KEY, streams.RELAY_KICK_KEY)
    yield client
    client.delete(STREAM, streams.RELAY_LOCK_KEY, streams.RELAY_KICK_KEY)
    client.close()


def _commit_row(engine: Engine, payload: str) -> None:
    with session_scope(engine) as s:
        s.add(OutboxRow(stream=STREAM, payload=payload))


def _pending(engine: Engine) -> list[str]:
    with session_scope(engine) as s:
        return [r.payload for r in pending_outbox(s, 10_000) if r.stream == STREAM]


def _published(client: redis.Redis) -> list[str]:
    return [fields["event"] for _, fields in client.xrange(STREAM)]


def test_a_relay_publishes_pending_rows_once_and_lets_go_of_the_lock(
    engine: Engine, client: redis.Redis
) -> None:
    for i in range(3):
        _commit_row(engine, f"row-{i}")
    factory = lambda: session_scope(engine)  # noqa: E731
    assert relay_outbox(factory, client) == 3
    assert relay_outbox(factory, client) == 0
    assert _published(client) == ["row-0", "row-1", "row-2"]
    assert _pending(engine) == []
    assert client.get(streams.RELAY_LOCK_KEY) is None


def test_a_caller_finding_the_lock_taken_returns_and_the_holder_publishes_its_row(
    engine: Engine, client: redis.Redis
) -> None:
    # The holder has read the (empty) table and is about to let go when another process
    # commits a row and asks for a relay.
    read_done, go = threading.Event(), threading.Event()
    calls = 0

    @contextmanager
    def holder_sessions() -> Iterator[Session]:
        nonlocal calls
        calls += 1
        with session_scope(engine) as s:
            yield s
        if calls == 1:
            read_done.set()
            assert go.wait(30)

    result: list[int] = []
    holder = threading.Thread(target=lambda: result.append(relay_outbox(holder_sessions, client)))
    holder.start()
    assert read_done.wait(30)
    _commit_row(engine, "late-row")
    assert relay_outbox(lambda: session_scope(engine), client) == 0  # the lock is taken
    assert _published(client) == []
    go.set()
    holder.join(30)
    assert result == [1]
    assert _published(client) == ["late-row"]
    assert _pending(engine) == []
    assert client.get(streams.RELAY_LOCK_KEY) is None


def test_concurrent_committers_never_wait_and_leave_nothing_pending(
    engine: Engine, client: redis.Redis
) -> None:
    def commit_and_relay(i: int) -> None:
        for j in range(10):
            _commit_row(engine, f"t{i}-{j}")
            relay_outbox(lambda: session_scope(engine), client)

    threads = [threading.Thread(target=commit_and_relay, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert _pending(engine) == []
    published = _published(client)
    assert sorted(published) == sorted(f"t{i}-{j}" for i in range(6) for j in range(10))
    assert client.get(streams.RELAY_LOCK_KEY) is None
