"""Per-arm usage (issue 13), on SQLite and PostgreSQL: an engine's ``UsageMeter`` counts
requests per (alias named, version served) with their latency, its flushes go through
``lorafleet:usage`` and ``workers.usage.fold_usage`` into the buckets, and
``GET /v1/usage?group_by=alias`` (and ``lorafleet usage --group-by alias``) reports each
arm side by side, tenant-scoped; the existing groupings are unchanged. The migration keeps
the buckets written before it (alias "", latency 0) and its downgrade sums arms back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from support.cli import run_cli
from support.live_api import LiveRegistry, fresh_database, serve_registry
from support.services import flushed_redis_db, fresh_postgres_database, redis_db_url

from engine.metering import UsageMeter
from engine.tenancy import Caller
from store.db import downgrade, make_engine, session_scope, upgrade
from workers.usage import fold_usage

ALIAS = "acme/bot@stable"
OLD, NEW = "acme/bot@1.0.0", "acme/bot@1.1.0"


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[LiveRegistry, str]]:
    with (
        flushed_redis_db(redis_db_url(3)) as redis_url,
        fresh_database(request.param, tmp_path) as url,
        serve_registry(url, tmp_path) as reg,
    ):
        for tenant in ("acme", "globex"):
            reg.admin.create_namespace(tenant, approval_policy="auto")
        yield reg, redis_url


def _caller(namespace: str) -> Caller:
    return Caller(token_id=7, namespaces=frozenset({namespace}), all_namespaces=False)


def _report(reg: LiveRegistry, token: str, **params: str) -> list[dict[str, Any]]:
    with reg.http(token) as http:
        response = http.get("/v1/usage", params=params)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _flush_and_fold(reg: LiveRegistry, redis_url: str, meter: UsageMeter) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        assert meter.send(client) >= 1
        return fold_usage(lambda: session_scope(reg.engine), client)
    finally:
        client.close()


def test_usage_grouped_by_alias_reports_each_arm(
    registry: tuple[LiveRegistry, str], tmp_path: Path
) -> None:
    reg, redis_url = registry
    meter = UsageMeter("engine-a", "tiny-llama")
    acme = _caller("acme")
    for latency in (10, 20, 30):  # three requests on the old arm
        meter.record(
            acme,
            OLD,
            prompt_tokens=4,
            completion_tokens=1,
            outcome="ok",
            alias=ALIAS,
            latency_ms=latency,
        )
    meter.record(
        acme, NEW, prompt_tokens=5, completion_tokens=0, outcome="error", alias=ALIAS, latency_ms=7
    )
    meter.record(acme, OLD, prompt_tokens=2, completion_tokens=1, outcome="ok", latency_ms=3)
    meter.record(
        _caller("globex"),
        "globex/bot@1.0.0",
        prompt_tokens=1,
        completion_tokens=1,
        outcome="ok",
        alias="globex/bot@stable",
        latency_ms=1,
    )
    assert _flush_and_fold(reg, redis_url, meter) == 1

    reader = reg.mint("reader", "acme", "acme-app")
    arms = _report(reg, reader, group_by="alias")
    base = {"namespace": "acme", "cancelled": 0}
    assert arms == [
        {
            **base,
            "alias": None,
            "adapter": OLD,
            "requests": 1,
            "prompt_tokens": 2,
            "completion_tokens": 1,
            "errors": 0,
            "latency_ms": 3,
            "mean_latency_ms": 3.0,
        },
        {
            **base,
            "alias": ALIAS,
            "adapter": OLD,
            "requests": 3,
            "prompt_tokens": 12,
            "completion_tokens": 3,
            "errors": 0,
            "latency_ms": 60,
            "mean_latency_ms": 20.0,
        },
        {
            **base,
            "alias": ALIAS,
            "adapter": NEW,
            "requests": 1,
            "prompt_tokens": 5,
            "completion_tokens": 0,
            "errors": 1,
            "latency_ms": 7,
            "mean_latency_ms": 7.0,
        },
    ]
    assert _report(reg, reader, group_by="alias", alias=ALIAS) == arms[1:]
    # The other groupings sum over aliases as before, without latency fields.
    assert _report(reg, reader) == [
        {
            **base,
            "adapter": OLD,
            "requests": 4,
            "prompt_tokens": 14,
            "completion_tokens": 4,
            "errors": 0,
        },
        {
            **base,
            "adapter": NEW,
            "requests": 1,
            "prompt_tokens": 5,
            "completion_tokens": 0,
            "errors": 1,
        },
    ]
    # Tenancy: the other tenant's alias is not in acme's report; its namespace is a 404.
    assert _report(reg, reader, group_by="alias", alias="globex/bot@stable") == []
    with reg.http(reader) as http:
        theirs = http.get("/v1/usage", params={"namespace": "globex", "group_by": "alias"})
    assert theirs.status_code == 404
    everything = _report(reg, reg.admin_token, group_by="alias")
    assert {(r["alias"], r["adapter"]) for r in everything} == {
        (None, OLD),
        (ALIAS, OLD),
        (ALIAS, NEW),
        ("globex/bot@stable", "globex/bot@1.0.0"),
    }

    # Replaying every flush adds nothing.
    client = redis.Redis.from_url(redis_url)
    try:
        for _entry_id, fields in client.xrange("lorafleet:usage"):
            client.xadd("lorafleet:usage", {"event": fields[b"event"]})
        assert fold_usage(lambda: session_scope(reg.engine), client) == 0
    finally:
        client.close()
    assert _report(reg, reader, group_by="alias") == arms

    printed = run_cli(reg, tmp_path, "usage", "--group-by", "alias", "--json", token=reader)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["data"] == arms
    table = run_cli(reg, tmp_path, "usage", "--group-by", "alias", token=reader, columns=220)
    assert table.returncode == 0, table.stderr
    assert "mean_latency_ms" in table.stdout and ALIAS in table.stdout and "20.0" in table.stdout


def test_an_unknown_group_by_is_a_400(registry: tuple[LiveRegistry, str]) -> None:
    reg, _ = registry
    with reg.http(reg.admin_token) as http:
        response = http.get("/v1/usage", params={"group_by": "arm"})
    assert response.status_code in (400, 422), response.text
    assert "alias" in response.text


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'arms.db'}"
        return
    with fresh_postgres_database("lorafleet_arms") as url:
        yield url


def test_the_migration_keeps_old_buckets_and_its_downgrade_sums_arms(db_url: str) -> None:
    upgrade(db_url, "0006_aliases")
    engine = make_engine(db_url)
    insert = sa.text(
        "INSERT INTO usage_buckets (hour, token_id, namespace, adapter, base_model, requests,"
        " prompt_tokens, completion_tokens, errors, cancelled)"
        " VALUES ('2026-12-01 10:00:00+00:00', 0, 'acme', :adapter, 'm', 2, 8, 2, 0, 0)"
    )
    try:
        with engine.begin() as conn:
            conn.execute(insert, {"adapter": OLD})
        upgrade(db_url)
        with engine.begin() as conn:
            row = conn.execute(sa.text("SELECT alias, latency_ms FROM usage_buckets")).one()
            assert tuple(row) == ("", 0)
            conn.execute(
                sa.text(
                    "INSERT INTO usage_buckets (hour, token_id, namespace, adapter, alias,"
                    " base_model, requests, prompt_tokens, completion_tokens, errors, cancelled,"
                    " latency_ms) VALUES ('2026-12-01 10:00:00+00:00', 0, 'acme', :adapter,"
                    " :alias, 'm', 3, 12, 3, 1, 0, 40)"
                ),
                {"adapter": OLD, "alias": ALIAS},
            )
        downgrade(db_url, "0006_aliases")
        with engine.begin() as conn:
            rows = conn.execute(
                sa.text("SELECT requests, prompt_tokens, errors FROM usage_buckets")
            ).all()
        assert [tuple(r) for r in rows] == [(5, 20, 1)]
    finally:
        engine.dispose()
