"""A poison event never stops ingest (issue 12, class 6): a real ``lorafleet bridge`` process
on real Redis, over PostgreSQL and SQLite.

Every entry the bridge cannot process (a NUL or another control character in any string, a
value the database's JSON refuses: NaN, Infinity, an integer of thousands of digits, JSON
nested past the stored bound, duplicate keys) is dead-lettered with its reason on the first
delivery: not after ``bridge_max_deliveries`` reclaims, and the bridge process never exits.
A reused ``event_id`` with another payload is dead-lettered as ``event_id_conflict`` (the
same payload again stays a harmless duplicate). After the whole burst a good announcement is
still recorded. Before the fix a NUL in ``job_id`` was a ``DataError`` on PostgreSQL that
killed the bridge (and it crash-looped until the entry reached the DLQ minutes later).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from support.processes import BRIDGE_READY, Proc, bridge_argv, process_env, wait_for
from support.services import flushed_redis_db, fresh_postgres_database, redis_db_url

from events import streams
from events.dlq import list_dead_letters
from events.models import JobCompleted
from store.models import IngestRecord

NS = "acme"


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def bridge(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    from store.db import upgrade

    root = tmp_path_factory.mktemp(f"poison-{request.param}")
    with _database(request.param, root) as db_url, flushed_redis_db(redis_db_url(5)) as r_url:
        upgrade(db_url)
        env = process_env(
            {
                "LORAFLEET_DATABASE_URL": db_url,
                "LORAFLEET_REDIS_URL": r_url,
                "LORAFLEET_BLOB_URL": f"file://{root / 'blobs'}",
                "LORAFLEET_HOME": str(root / "home"),
                "LORAFLEET_BRIDGE_BLOCK_MS": "200",
                # Production reclaim settings: a dead letter that came from reclaiming would
                # need far longer than this test waits.
                "LORAFLEET_LOG_FORMAT": "json",
            }
        )
        proc = Proc("bridge", bridge_argv("poison-1"), env, root).start(BRIDGE_READY)
        engine = sa.create_engine(db_url)
        try:
            yield proc, redis.Redis.from_url(r_url), engine
        finally:
            proc.stop()
            engine.dispose()


def _database(kind: str, root: Path):
    if kind == "postgresql":
        return fresh_postgres_database("lorafleet_poison")
    from contextlib import nullcontext

    return nullcontext(f"sqlite:///{root / 'registry.db'}")


def _good(**overrides: Any) -> dict[str, Any]:
    event = JobCompleted(
        job_id=f"job-{uuid.uuid4().hex[:8]}",
        namespace=NS,
        output_model=f"{NS}/p-{uuid.uuid4().hex[:8]}@1.0.0",
        base_model="tiny",
        artifact_uri="file:///nowhere",
    ).model_dump(mode="json")
    event.update(overrides)
    return event


def _raw(event: dict[str, Any], **replace: str) -> str:
    """The event's JSON with ``"__NAME__"`` placeholders replaced by raw JSON text."""
    text = json.dumps(event)
    for name, raw in replace.items():
        text = text.replace(json.dumps(f"__{name}__"), raw)
    return text


_STRING_FIELDS = ("job_id", "base_model", "dataset", "event_id")
_BAD_CHARS = ("\x00", "\x01", "\x1b", "\x7f", "\n")
# name -> (the stream entry's event text, a fragment of the reason)
POISON: dict[str, tuple[str, str]] = {}
for _field in _STRING_FIELDS:
    for _ch in _BAD_CHARS:
        POISON[f"{_field}-U+{ord(_ch):04X}"] = (
            json.dumps(_good(**{_field: f"a{_ch}b"})),
            "control character",
        )
for _ch in ("\x00", "\x07"):
    POISON[f"description-U+{ord(_ch):04X}"] = (
        json.dumps(_good(description=f"x{_ch}y")),
        "control character",
    )
    POISON[f"hyperparameters-key-U+{ord(_ch):04X}"] = (
        json.dumps(_good(hyperparameters={f"k{_ch}": 1})),
        "control character",
    )
    POISON[f"metrics-value-U+{ord(_ch):04X}"] = (
        json.dumps(_good(metrics={"m": f"v{_ch}"})),
        "control character",
    )
for _name, _raw_value in {
    "nan": "NaN",
    "infinity": "Infinity",
    "minus-infinity": "-Infinity",
    "overflowing-float": "1e999",
    "huge-int": "9" * 5000,
    "int-beyond-20-digits": "1" * 21,
    "deep": "[" * 40 + "]" * 40,
    "very-deep": "[" * 5000 + "]" * 5000,
}.items():
    POISON[f"metrics-{_name}"] = (
        _raw(_good(metrics={"x": "__V__"}), V=_raw_value),
        "invalid_event",
    )
POISON["duplicate-keys"] = (
    json.dumps(_good()).replace('"job_id":', '"job_id": "first", "job_id":', 1),
    "duplicate_key",
)


def _dlq_by_event(client: redis.Redis) -> dict[str, str]:
    return {
        letter.fields.get("event", ""): letter.reason
        for letter in list_dead_letters(client, count=10_000)
    }


def test_every_poison_entry_is_dead_lettered_on_first_delivery_and_ingest_goes_on(bridge) -> None:
    proc, client, engine = bridge
    for text, _ in POISON.values():
        client.xadd(streams.JOBS_STREAM, {"event": text})
    good = _good()
    client.xadd(streams.JOBS_STREAM, {"event": json.dumps(good)})

    wait_for(lambda: len(_dlq_by_event(client)) >= len(POISON), 60, "every poison dead-lettered")
    letters = _dlq_by_event(client)
    for name, (text, fragment) in POISON.items():
        reason = letters.get(text)
        assert reason is not None, f"{name} was not dead-lettered"
        assert fragment in reason, (name, reason[:300])
        assert "delivered" not in reason, (name, "dead-lettered by reclaim, not on first try")
    assert proc.alive(), proc.tail()
    assert "Traceback" not in proc.tail(), proc.tail()

    def recorded() -> bool:
        with engine.connect() as conn:
            return (
                conn.execute(
                    sa.select(IngestRecord.event_id).where(
                        IngestRecord.event_id == good["event_id"]
                    )
                ).first()
                is not None
            )

    wait_for(recorded, 30, "the good announcement after the poison is recorded")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(IngestRecord)).scalar_one()
    assert rows == 1, "a poison entry left an ingest record"
    wait_for(
        lambda: client.xpending(streams.JOBS_STREAM, streams.INGEST_GROUP)["pending"] == 0,
        30,
        "every entry acknowledged",
    )


def test_reused_event_id_with_another_payload_is_event_id_conflict(bridge) -> None:
    proc, client, engine = bridge
    first = _good()
    same_again = dict(first)
    changed = {**first, "artifact_uri": "file:///elsewhere"}
    for event in (first, same_again, changed):
        client.xadd(streams.JOBS_STREAM, {"event": json.dumps(event)})
    changed_text = json.dumps(changed)
    wait_for(lambda: changed_text in _dlq_by_event(client), 30, "the conflict dead-lettered")
    reason = _dlq_by_event(client)[changed_text]
    assert reason.startswith("event_id_conflict"), reason
    assert json.dumps(first) not in _dlq_by_event(client), "the same payload is a duplicate"
    with engine.connect() as conn:
        payload = conn.execute(
            sa.select(IngestRecord.payload).where(IngestRecord.event_id == first["event_id"])
        ).scalar_one()
    assert payload["artifact_uri"] == first["artifact_uri"], "the conflict changed the record"
    assert proc.alive(), proc.tail()


def test_an_entry_the_database_refuses_is_dead_lettered_and_the_bridge_goes_on(bridge) -> None:
    """The last line: an entry that passes its contract but that the database refuses (here a
    real constraint added for the test) is ``unprocessable`` on the first try, not a crash."""
    proc, client, engine = bridge
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                sa.text(
                    "ALTER TABLE ingest_records ADD CONSTRAINT poison_check "
                    "CHECK (job_id NOT LIKE 'reject-%')"
                )
            )
        else:
            conn.execute(
                sa.text(
                    "CREATE TRIGGER poison_check BEFORE INSERT ON ingest_records "
                    "WHEN NEW.job_id LIKE 'reject-%' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
    refused, good = _good(job_id="reject-1"), _good()
    for event in (refused, good):
        client.xadd(streams.JOBS_STREAM, {"event": json.dumps(event)})
    refused_text = json.dumps(refused)
    wait_for(lambda: refused_text in _dlq_by_event(client), 30, "the refused entry dead-lettered")
    reason = _dlq_by_event(client)[refused_text]
    assert reason.startswith("unprocessable: "), reason
    assert "delivered" not in reason, reason

    def recorded() -> bool:
        with engine.connect() as conn:
            return (
                conn.execute(
                    sa.select(IngestRecord.event_id).where(
                        IngestRecord.event_id == good["event_id"]
                    )
                ).first()
                is not None
            )

    wait_for(recorded, 30, "the next announcement is recorded")
    assert proc.alive(), proc.tail()
