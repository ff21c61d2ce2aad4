"""Tables behave the same on SQLite and PostgreSQL: aware UTC timestamps, JSON columns,
unique coordinates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.exc import IntegrityError, StatementError
from sqlmodel import Session

from store.models import AdapterVersion, IngestRecord, Namespace, new_adapter_id


def _version(**kw) -> AdapterVersion:
    values = dict(
        id=new_adapter_id(),
        namespace="acme",
        name="bot",
        version="1.0.0",
        base_model="tiny",
        status="pending",
        created_by="t",
        updated_by="t",
    )
    values.update(kw)
    return AdapterVersion(**values)


def test_timestamps_come_back_aware_utc(engine) -> None:
    plus2 = timezone(timedelta(hours=2))
    with Session(engine) as s:
        s.add(
            Namespace(
                name="acme", created_by="t", created_at=datetime(2024, 5, 1, 12, tzinfo=plus2)
            )
        )
        s.commit()
    with Session(engine) as s:
        ns = s.get(Namespace, "acme")
        assert ns.created_at == datetime(2024, 5, 1, 10, tzinfo=UTC)
        assert ns.created_at.utcoffset() == timedelta(0)


def test_naive_timestamps_are_refused(engine) -> None:
    with Session(engine) as s:
        s.add(Namespace(name="acme", created_by="t", created_at=datetime(2024, 5, 1, 12)))
        with pytest.raises(StatementError, match="naive datetime"):
            s.commit()


def test_json_columns_round_trip(engine) -> None:
    with Session(engine) as s:
        s.add(Namespace(name="acme", created_by="t"))
        s.flush()
        v = _version(
            target_modules=["q_proj"], hyperparameters={"lr": 1e-4, "nested": {"a": [1, 2]}}
        )
        s.add(v)
        s.add(IngestRecord(event_id="e1", payload={"artifact_uri": "file:///x", "n": None}))
        s.commit()
        vid = v.id
    with Session(engine) as s:
        got = s.get(AdapterVersion, vid)
        assert got.hyperparameters == {"lr": 1e-4, "nested": {"a": [1, 2]}}
        assert got.target_modules == ["q_proj"] and got.coordinates == "acme/bot@1.0.0"
        assert s.get(IngestRecord, "e1").payload == {"artifact_uri": "file:///x", "n": None}
        assert s.get(IngestRecord, "e1").status == "received"


def test_coordinates_are_unique(engine) -> None:
    with Session(engine) as s:
        s.add(Namespace(name="acme", created_by="t"))
        s.flush()
        s.add(_version())
        s.commit()
        s.add(_version())
        with pytest.raises(IntegrityError):
            s.commit()


def test_version_needs_an_existing_namespace(engine) -> None:
    with Session(engine) as s:
        s.add(_version(namespace="ghost"))
        with pytest.raises(IntegrityError):
            s.commit()
