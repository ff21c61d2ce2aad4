"""``store.api.fleet_views``: one render per fleet view and generation at a time, on real
PostgreSQL with real threads. A table lock taken by the test holds the leading render in
its listing, so who waits and who renders is decided, not raced."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session
from support.processes import wait_for

from store import registry
from store.api.fleet_views import FleetViews
from store.models import Provenance
from store.outbox import current_generation, next_generation

pytestmark = [
    pytest.mark.parametrize("db_url", ["postgresql"], indirect=True),
    pytest.mark.timeout(60),
]


def _ready(session: Session, make_package, base_model: str, seed: int) -> None:
    row, _ = registry.commit_version(
        session,
        make_package(seed),
        namespace="acme",
        name="bot",
        version=f"1.0.{seed}",
        base_model=base_model,
        provenance=Provenance(),
        actor="trainer",
    )
    session.commit()
    assert row.status == "ready"


def _blocked_on_lock(engine: Engine) -> int:
    """How many backends of this database wait for a lock now."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()


class _Asks:
    """``views.render`` in threads, each on its own session; answers and errors kept."""

    def __init__(self, engine: Engine, views: FleetViews, base_model: str) -> None:
        self.engine, self.views, self.base_model = engine, views, base_model
        self.answers: dict[str, bytes] = {}
        self.errors: dict[str, BaseException] = {}
        self.threads: list[threading.Thread] = []

    def start(self, name: str) -> None:
        def ask() -> None:
            try:
                with Session(self.engine) as session:
                    self.answers[name] = self.views.render(session, self.base_model, None)
            except BaseException as exc:  # noqa: BLE001 - asserted on by the test
                self.errors[name] = exc

        thread = threading.Thread(target=ask, name=f"ask-{name}")
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(30)
            assert not thread.is_alive()

    def generation(self, name: str) -> int:
        return json.loads(self.answers[name])["generation"]


@pytest.fixture
def asks(engine, session, auto_ns, base_model, make_package) -> _Asks:
    """One ready version of ``base_model``, and a fresh ``FleetViews`` to ask it of."""
    _ready(session, make_package, base_model, seed=1)
    return _Asks(engine, FleetViews(), base_model)


def _locked(engine: Engine) -> tuple[sa.Connection, Callable[[], None]]:
    """A connection holding ``adapter_versions`` exclusively, and the call that lets go."""
    conn = engine.connect()
    conn.execute(sa.text("LOCK TABLE adapter_versions IN ACCESS EXCLUSIVE MODE"))

    def release() -> None:
        conn.commit()
        conn.close()

    return conn, release


def test_requests_at_one_generation_share_one_render(
    engine, session, base_model, asks: _Asks
) -> None:
    views = asks.views
    _, release = _locked(engine)
    try:
        for i in range(5):
            asks.start(f"engine-{i}")
        wait_for(lambda: views.waiting == 4, 20, "four requests waiting for the first")
        assert _blocked_on_lock(engine) == 1  # only the leader lists
    finally:
        release()
    asks.join()
    assert not asks.errors
    assert views.renders == 1
    assert len(set(asks.answers.values())) == 1 and len(asks.answers) == 5
    assert asks.generation("engine-0") == current_generation(session)
    with Session(engine) as fresh:  # the kept answer is the one a new render gives
        assert views.render(fresh, base_model, None) == asks.answers["engine-0"]
    assert views.renders == 1


def test_a_request_that_saw_a_later_generation_never_gets_the_older_answer(
    engine, session, base_model, asks: _Asks
) -> None:
    older = current_generation(session)
    views = asks.views
    _, release = _locked(engine)
    try:
        asks.start("before")
        wait_for(lambda: _blocked_on_lock(engine) == 1, 20, "the first render listing")
        next_generation(session)  # a serving change commits meanwhile
        session.commit()
        asks.start("after")  # sees the newer generation: renders itself
        wait_for(lambda: _blocked_on_lock(engine) == 2, 20, "the second render listing")
        asks.start("after-too")  # the newer render is in flight: waits for it
        wait_for(lambda: views.waiting == 1, 20, "a request waiting for the newer render")
    finally:
        release()
    asks.join()
    assert not asks.errors
    assert views.renders == 2
    assert asks.generation("before") == older
    assert asks.generation("after") == asks.generation("after-too") == older + 1


def test_when_the_leading_render_fails_the_waiters_render_on_their_own(
    engine, session, base_model, asks: _Asks
) -> None:
    views = asks.views
    locker, release = _locked(engine)
    try:
        asks.start("leader")
        wait_for(lambda: _blocked_on_lock(engine) == 1, 20, "the leader listing")
        asks.start("waiter")
        wait_for(lambda: views.waiting == 1, 20, "a request waiting")
        # The leader's connection dies under it (a server restart, a killed backend).
        locker.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
        wait_for(lambda: "leader" in asks.errors, 20, "the leader failing")
        wait_for(lambda: _blocked_on_lock(engine) == 1, 20, "the waiter listing itself")
    finally:
        release()
    asks.join()
    assert isinstance(asks.errors["leader"], sa.exc.OperationalError)
    assert set(asks.answers) == {"waiter"}
    assert asks.generation("waiter") == current_generation(session)
    assert views.renders == 2 and views.waiting == 0
