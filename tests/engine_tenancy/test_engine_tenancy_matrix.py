"""The tenancy matrix at the engine, through the official ``openai`` client, on SQLite and
PostgreSQL: three tenants x {list, complete, chat, stream} x {own, other, none, revoked,
expired}. Own adapters work; another tenant's adapter is exactly the 404 of a missing one;
no, a bad, a revoked or an expired token is 401 on every route."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest
from support.tiny import TINY_MODEL
from tenancy_fixtures import TENANTS, Fleet, adapter_of

OPS = ("list", "complete", "chat", "stream")


def _client(fleet: Fleet, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fleet.engine_url}/v1", api_key=token, max_retries=0)


def _do(client: openai.OpenAI, op: str, model: str) -> Any:
    """Run ``op`` against ``model``; returns the listed ids or the generated text."""
    if op == "list":
        return sorted(m.id for m in client.models.list())
    if op == "complete":
        out = client.completions.create(model=model, prompt="Hi", max_tokens=4, temperature=0)
        return out.choices[0].text
    if op == "chat":
        out = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            temperature=0,
        )
        return out.choices[0].message.content
    chunks = client.completions.create(
        model=model, prompt="Hi", max_tokens=4, temperature=0, stream=True
    )
    return "".join(c.choices[0].text for c in chunks if c.choices)


def _error(exc: openai.APIStatusError, model: str) -> dict[str, Any]:
    """The error body with the model name blanked, to compare two refusals."""
    body = exc.response.json()["error"]
    return {**body, "message": body["message"].replace(model, "<model>")}


@pytest.fixture(scope="module")
def bad_tokens(fleet: Fleet) -> dict[str, str]:
    """A revoked and an expired token of ``acme`` (each used once while it was valid)."""
    reg = fleet.registry
    revoked = reg.mint("reader", "acme", "revoked-app")
    soon = datetime.now(UTC) + timedelta(seconds=2)
    with reg.http(reg.admin_token) as http:
        body = {
            "role": "reader",
            "namespace": "acme",
            "name": "short",
            "expires_at": soon.isoformat(),
        }
        expired = http.post("/v1/tokens", json=body).json()["token"]
    for token in (revoked, expired):
        assert adapter_of("acme") in _do(_client(fleet, token), "list", "")  # now cached
    fleet.revoke(revoked)
    while datetime.now(UTC) <= soon:
        time.sleep(0.1)
    return {"revoked": revoked, "expired": expired, "bad": "lft_not-a-real-token"}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("tenant", TENANTS)
def test_own_adapter_works_and_only_own_adapters_are_listed(
    fleet: Fleet, tenant: str, op: str
) -> None:
    client = _client(fleet, fleet.readers[tenant])
    result = _do(client, op, adapter_of(tenant))
    if op == "list":
        assert result == sorted([TINY_MODEL, adapter_of(tenant)])
    else:
        # Answered 200 (any refusal raises); a tiny random model may well say nothing.
        assert isinstance(result, str)
        base = _do(client, op, TINY_MODEL)  # the base model is everyone's
        assert isinstance(base, str)


@pytest.mark.parametrize("op", ("complete", "chat", "stream"))
@pytest.mark.parametrize("tenant", TENANTS)
def test_other_tenants_adapter_is_the_404_of_a_missing_one(
    fleet: Fleet, tenant: str, op: str
) -> None:
    client = _client(fleet, fleet.readers[tenant])
    missing = f"{tenant}/no-such-bot@1.0.0"
    with pytest.raises(openai.NotFoundError) as absent:
        _do(client, op, missing)
    for other in TENANTS:
        if other == tenant:
            continue
        with pytest.raises(openai.NotFoundError) as hidden:
            _do(client, op, adapter_of(other))
        assert _error(hidden.value, adapter_of(other)) == _error(absent.value, missing)
        assert hidden.value.response.json()["error"]["code"] == "model_not_found"
    # ... and the model card too.
    for other in TENANTS:
        if other != tenant:
            with httpx.Client(base_url=fleet.engine_url) as http:
                headers = {"Authorization": f"Bearer {fleet.readers[tenant]}"}
                card = http.get(f"/v1/models/{adapter_of(other)}", headers=headers)
                gone = http.get(f"/v1/models/{missing}", headers=headers)
            assert card.status_code == gone.status_code == 404
            assert card.json()["error"]["message"].replace(adapter_of(other), "<m>") == gone.json()[
                "error"
            ]["message"].replace(missing, "<m>")


@pytest.mark.parametrize("who", ("revoked", "expired", "bad"))
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("tenant", TENANTS)
def test_revoked_expired_and_bad_tokens_are_401(
    fleet: Fleet, bad_tokens: dict[str, str], tenant: str, op: str, who: str
) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        _do(_client(fleet, bad_tokens[who]), op, adapter_of(tenant))
    assert refused.value.status_code == 401
    assert refused.value.response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("op", OPS)
def test_no_token_is_401(fleet: Fleet, op: str) -> None:
    paths = {
        "list": ("GET", "/v1/models", None),
        "complete": ("POST", "/v1/completions", {"model": TINY_MODEL, "prompt": "Hi"}),
        "chat": (
            "POST",
            "/v1/chat/completions",
            {"model": TINY_MODEL, "messages": [{"role": "user", "content": "Hi"}]},
        ),
        "stream": (
            "POST",
            "/v1/completions",
            {"model": TINY_MODEL, "prompt": "Hi", "stream": True},
        ),
    }
    method, path, body = paths[op]
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}):
        response = httpx.request(method, f"{fleet.engine_url}{path}", json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_readiness_says_auth_registry(fleet: Fleet) -> None:
    ready = httpx.get(f"{fleet.engine_url}/v1/health/ready").json()
    assert ready["auth"] == "registry" and "warning" not in ready


def test_global_token_sees_every_tenant(fleet: Fleet) -> None:
    token = fleet.registry.mint("reader", None, "ops")
    listed = _do(_client(fleet, token), "list", "")
    assert listed == sorted([TINY_MODEL, *(adapter_of(t) for t in TENANTS)])


def test_revocation_reaches_the_engine_within_one_second(fleet: Fleet) -> None:
    token = fleet.registry.mint("reader", "globex", "soon-revoked")
    client = _client(fleet, token)
    assert _do(client, "complete", adapter_of("globex"))  # cached now
    calls = fleet.runtime.auth.registry_calls  # type: ignore[union-attr]
    assert _do(client, "list", "") and fleet.runtime.auth.registry_calls == calls  # type: ignore[union-attr]
    with fleet.registry.client(token) as reg_client:
        token_id = reg_client.whoami()["token_id"]
    fleet.registry.admin.revoke_token(token_id)
    fleet.relay()
    relayed = time.monotonic()
    while True:
        try:
            _do(client, "list", "")
        except openai.AuthenticationError:
            break
        assert time.monotonic() - relayed < 1.0, "the engine still honours a revoked token"
        time.sleep(0.02)
    assert time.monotonic() - relayed < 1.0
