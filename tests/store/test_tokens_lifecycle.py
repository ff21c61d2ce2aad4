"""The token lifecycle over the live API on SQLite and PostgreSQL: expiry, listing without
secrets, revocation (401 everywhere, one ``token.revoked`` event through the outbox),
``/v1/auth/whoami``, tenancy of all of it, and the ``lorafleet tokens`` commands."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from sqlmodel import Session, select
from support.cli import run_cli
from support.live_api import LiveRegistry

from events.revocations import TokenRevoked, decode_revocation
from events.streams import REVOCATIONS_STREAM
from store.db import session_scope
from store.models import OutboxRow
from workers.relay import relay_outbox


def _status(reg: LiveRegistry, token: str | None, path: str = "/v1/namespaces") -> int:
    with reg.http(token) as client:
        return client.get(path).status_code


def _mint(reg: LiveRegistry, token: str, **body: object) -> dict:
    with reg.http(token) as client:
        response = client.post("/v1/tokens", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def test_whoami_reports_role_scope_namespaces_and_expiry(live_registry: LiveRegistry) -> None:
    for ns in ("acme", "globex"):
        live_registry.admin.create_namespace(ns)
    expires = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    minted = _mint(
        live_registry,
        live_registry.admin_token,
        role="reader",
        namespace="acme",
        name="app",
        expires_at=expires.isoformat(),
    )
    with live_registry.client(minted["token"]) as client:
        me = client.whoami()
    assert me["token_id"] == minted["id"] and me["role"] == "reader"
    assert me["scope"] == "acme" and me["all_namespaces"] is False
    assert me["namespaces"] == ["acme"] and me["roles"] == {"acme": "reader"}
    assert datetime.fromisoformat(me["expires_at"]) == expires
    reader = live_registry.mint("reader", None, "fleet")
    with live_registry.client(reader) as client:
        everything = client.whoami()
    assert everything["all_namespaces"] is True and everything["scope"] is None
    assert everything["namespaces"] == ["acme", "globex"]
    assert _status(live_registry, None, "/v1/auth/whoami") == 401
    assert _status(live_registry, "lft_not-a-token", "/v1/auth/whoami") == 401


def test_expired_token_is_401_everywhere(live_registry: LiveRegistry) -> None:
    live_registry.admin.create_namespace("acme")
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    minted = _mint(
        live_registry,
        live_registry.admin_token,
        role="admin",
        namespace="acme",
        name="short",
        expires_at=soon.isoformat(),
    )
    assert _status(live_registry, minted["token"]) == 200
    while datetime.now(UTC) <= soon:
        time.sleep(0.1)
    for path in ("/v1/namespaces", "/v1/auth/whoami", "/v1/tokens", "/v1/adapters"):
        assert _status(live_registry, minted["token"], path) == 401, path
    with live_registry.http(minted["token"]) as client:
        answer = client.get("/v1/auth/whoami").json()
    assert answer["error"]["code"] == "unauthorized" and "expired" in answer["error"]["message"]


def test_expiry_must_be_future_and_carry_a_timezone(live_registry: LiveRegistry) -> None:
    with live_registry.http(live_registry.admin_token) as client:
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        naive = (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None).isoformat()
        for value in (past, naive, "tomorrow"):
            body = {"role": "reader", "name": "x", "expires_at": value}
            response = client.post("/v1/tokens", json=body)
            assert response.status_code in (400, 422), (value, response.text)
        assert client.get("/v1/tokens").json()["data"] == []  # nothing was minted


def test_list_shows_a_namespace_tokens_without_secrets(live_registry: LiveRegistry) -> None:
    for ns in ("acme", "globex"):
        live_registry.admin.create_namespace(ns)
    acme_admin = live_registry.mint("admin", "acme", "acme-admin")
    own = _mint(live_registry, acme_admin, role="reader", namespace="acme", name="app")
    live_registry.mint("reader", "globex", "theirs")
    with live_registry.http(acme_admin) as client:
        listed = client.get("/v1/tokens").json()["data"]
        explicit = client.get("/v1/tokens", params={"namespace": "acme"}).json()["data"]
        other = client.get("/v1/tokens", params={"namespace": "globex"})
        missing = client.get("/v1/tokens", params={"namespace": "nowhere"})
    assert listed == explicit
    assert {t["name"] for t in listed} == {"acme-admin", "app"}
    assert {t["namespace"] for t in listed} == {"acme"}
    text = json.dumps(listed)
    assert own["token"] not in text
    assert all("token" not in t and "token_hash" not in t for t in listed)
    # Another tenant's namespace answers like one that does not exist.
    assert other.status_code == missing.status_code == 404
    assert other.json()["error"]["message"].replace("globex", "X") == missing.json()["error"][
        "message"
    ].replace("nowhere", "X")
    reader = live_registry.mint("reader", "acme", "reader")
    assert _status(live_registry, reader, "/v1/tokens") == 403
    with live_registry.http(live_registry.admin_token) as client:
        every = client.get("/v1/tokens").json()["data"]
    assert {t["name"] for t in every} == {"acme-admin", "app", "theirs", "reader"}


def test_revoked_token_is_401_at_once_and_announced_once(
    live_registry: LiveRegistry, redis_url: str
) -> None:
    for ns in ("acme", "globex"):
        live_registry.admin.create_namespace(ns)
    acme_admin = live_registry.mint("admin", "acme", "acme-admin")
    globex_admin = live_registry.mint("admin", "globex", "globex-admin")
    victim = _mint(live_registry, acme_admin, role="writer", namespace="acme", name="ci")
    assert _status(live_registry, victim["token"]) == 200

    with live_registry.http(globex_admin) as client:
        theirs = client.delete(f"/v1/tokens/{victim['id']}")
        missing = client.delete("/v1/tokens/999999")
    assert theirs.status_code == missing.status_code == 404  # same answer as a missing one
    assert _status(live_registry, victim["token"]) == 200  # still valid

    with live_registry.http(acme_admin) as client:
        first = client.delete(f"/v1/tokens/{victim['id']}")
        again = client.delete(f"/v1/tokens/{victim['id']}")
    assert first.status_code == 200, first.text
    assert first.json()["revoked_at"] is not None
    assert again.status_code == 200 and again.json()["revoked_at"] == first.json()["revoked_at"]
    for path in ("/v1/namespaces", "/v1/auth/whoami", "/v1/adapters"):
        assert _status(live_registry, victim["token"], path) == 401, path

    with Session(live_registry.engine) as session:
        rows = session.exec(select(OutboxRow).where(OutboxRow.stream == REVOCATIONS_STREAM)).all()
    assert len(rows) == 1  # revoking twice announces once
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(REVOCATIONS_STREAM)
        assert relay_outbox(lambda: session_scope(live_registry.engine), client) >= 1
        entries = client.xrange(REVOCATIONS_STREAM)
    finally:
        client.close()
    assert len(entries) == 1
    event = decode_revocation(entries[0][1])
    assert isinstance(event, TokenRevoked)
    assert (event.token_id, event.namespace) == (victim["id"], "acme")


def test_a_reader_cannot_revoke_and_a_namespace_admin_cannot_touch_global_tokens(
    live_registry: LiveRegistry,
) -> None:
    live_registry.admin.create_namespace("acme")
    reader = live_registry.mint("reader", "acme", "reader")
    acme_admin = live_registry.mint("admin", "acme", "acme-admin")
    fleet = _mint(live_registry, live_registry.admin_token, role="reader", name="fleet")
    listed = _mint(live_registry, acme_admin, role="reader", namespace="acme", name="app")
    with live_registry.http(reader) as client:
        assert client.delete(f"/v1/tokens/{listed['id']}").status_code == 403
    with live_registry.http(acme_admin) as client:
        assert client.delete(f"/v1/tokens/{fleet['id']}").status_code == 404
    assert _status(live_registry, fleet["token"]) == 200
    assert _status(live_registry, listed["token"]) == 200


def test_tokens_cli_creates_lists_and_revokes(live_registry: LiveRegistry, tmp_path: Path) -> None:
    live_registry.admin.create_namespace("acme")
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    made = run_cli(
        live_registry,
        tmp_path,
        *("tokens", "create", "--role", "reader", "--namespace", "acme", "--name", "cli-app"),
        *("--expires-at", later),
    )
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert _status(live_registry, secret) == 200
    listed = run_cli(live_registry, tmp_path, "tokens", "list", "--namespace", "acme", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["data"]
    assert [r["name"] for r in rows] == ["cli-app"] and rows[0]["expires_at"] is not None
    assert secret not in listed.stdout
    table = run_cli(live_registry, tmp_path, "tokens", "list", "--namespace", "acme", columns=200)
    assert "cli-app" in table.stdout and secret not in table.stdout
    revoked = run_cli(live_registry, tmp_path, "tokens", "revoke", str(rows[0]["id"]))
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked token {rows[0]['id']}" in revoked.stdout
    assert _status(live_registry, secret) == 401
    gone = run_cli(live_registry, tmp_path, "tokens", "revoke", "424242")
    assert gone.returncode != 0 and "not found" in (gone.stdout + gone.stderr)
