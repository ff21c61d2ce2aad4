"""Hostile text in every string field the API writes, over real HTTP on SQLite and PostgreSQL.

For each string field of a POST/PATCH route and of the upload form (issue 12, class 2), a
value with a NUL byte, another control character, a lone surrogate or more characters than
its column is refused at the edge with 400/422 and the ``{"error": {"code", "message"}}``
shape, never a 500 (the database would refuse it as an unmapped ``DataError``); the access log
gains a row for the refused mutation; and a good request right after succeeds. Unicode that
is merely unusual (emoji, right-to-left, combining marks, non-characters) never gives a 5xx.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry, directory_files, fresh_database, serve_registry, upload
from support.tiny import tiny_hf_config

from store.models import AccessLog

BASE = "tiny"
NS = "acme"
_serial = itertools.count(1)


@dataclass
class Stack:
    live: LiveRegistry
    client: httpx.Client
    adapter_id: str
    files: list[tuple[str, bytes]]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp(f"hostile-text-{request.param}")
    source = write_hf_peft(random_adapter(rank=2, modules=("q_proj", "v_proj")), root / "adapter")
    files = directory_files(source)
    with fresh_database(request.param, root) as url, serve_registry(url, root) as live:
        with live.http(live.admin_token) as client:
            r = client.post("/v1/base-models", json={"name": BASE, "config": tiny_hf_config()})
            assert r.status_code == 201, r.text
            r = client.post("/v1/namespaces", json={"name": NS, "approval_policy": "auto"})
            assert r.status_code == 201, r.text
            r = upload(client, files, namespace=NS, name="bot", version="1.0.0", base_model=BASE)
            assert r.status_code == 201, r.text
            yield Stack(live, client, r.json()["id"], files)


# --- the values --------------------------------------------------------------------------

_plain = st.text(st.characters(codec="utf-8", categories=["L", "N"]), max_size=8)
_control = st.characters(categories=["Cc"], exclude_characters="\t\n\r")
# Refused everywhere: a NUL, another control character, a lone surrogate, too long.
_with_nul = st.tuples(_plain, _plain).map(lambda p: f"{p[0]}\x00{p[1]}")
_with_control = st.tuples(_plain, _control, _plain).map("".join)
_with_surrogate = st.tuples(_plain, st.characters(categories=["Cs"])).map("".join)
_too_long = st.integers(4097, 5000).map(lambda n: "é" * n)
HOSTILE = st.one_of(_with_nul, _with_control, _with_surrogate, _too_long)
# Form fields travel as UTF-8: a lone surrogate cannot even be sent.
HOSTILE_FORM = st.one_of(_with_nul, _with_control, _too_long)
UNUSUAL = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=40),
    st.sampled_from(["👩‍💻🏳️‍🌈", "\u202eevil\u202c", "e\u0301\u0308", "\ufeff\ufffe\uffff", "𝔘"]),
)


# --- the fields --------------------------------------------------------------------------

Send = Callable[[Stack, str], httpx.Response]


def _send(s: Stack, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
    """``body`` as ASCII JSON (``\\uXXXX`` escapes): a lone surrogate reaches the server."""
    content = json.dumps(body).encode("ascii")
    headers = {"Content-Type": "application/json"}
    return s.client.request(method, path, content=content, headers=headers)


def _patch(s: Stack, body: dict[str, Any]) -> httpx.Response:
    return _send(s, "PATCH", f"/v1/adapters/{s.adapter_id}", body)


def _upload(s: Stack, **fields: str) -> httpx.Response:
    coords = {
        "namespace": NS,
        "name": "up",
        "version": f"0.{next(_serial)}.0",
        "base_model": BASE,
    }
    coords.update({k: fields.pop(k) for k in list(fields) if k in coords})
    return upload(s.client, s.files, **coords, **fields)


def _uid() -> str:
    return f"x{next(_serial)}"


FIELDS: dict[str, Send] = {
    "namespace.create.name": lambda s, v: _send(s, "POST", "/v1/namespaces", {"name": v}),
    "namespace.create.description": lambda s, v: _send(
        s, "POST", "/v1/namespaces", {"name": f"ns{_uid()}", "description": v}
    ),
    "namespace.update.description": lambda s, v: _send(
        s, "PATCH", f"/v1/namespaces/{NS}", {"description": v}
    ),
    "base_model.name": lambda s, v: _send(
        s, "POST", "/v1/base-models", {"name": v, "config": tiny_hf_config()}
    ),
    "base_model.config.value": lambda s, v: _send(
        s,
        "POST",
        "/v1/base-models",
        {"name": f"bm{_uid()}", "config": {**tiny_hf_config(), "note": v}},
    ),
    "token.name": lambda s, v: _send(s, "POST", "/v1/tokens", {"role": "reader", "name": v}),
    "token.namespace": lambda s, v: _send(
        s, "POST", "/v1/tokens", {"role": "reader", "namespace": v, "name": _uid()}
    ),
    "adapter.description": lambda s, v: _patch(s, {"description": v}),
    "adapter.reason": lambda s, v: _patch(s, {"status": "ready", "reason": v}),
    "adapter.custom_fields.key": lambda s, v: _patch(s, {"custom_fields": {v: 1}}),
    "adapter.custom_fields.value": lambda s, v: _patch(s, {"custom_fields": {"k": [v]}}),
}
FORM_FIELDS: dict[str, Send] = {
    "upload.namespace": lambda s, v: _upload(s, namespace=v),
    "upload.name": lambda s, v: _upload(s, name=v),
    "upload.version": lambda s, v: _upload(s, version=v),
    "upload.base_model": lambda s, v: _upload(s, base_model=v),
    "upload.description": lambda s, v: _upload(s, description=v),
    "upload.provenance.job_id": lambda s, v: _upload(s, provenance=json.dumps({"job_id": v})),
    "upload.provenance.dataset": lambda s, v: _upload(s, provenance=json.dumps({"dataset": v})),
    "upload.custom_fields.key": lambda s, v: _upload(s, custom_fields=json.dumps({v: "x"})),
    "upload.custom_fields.value": lambda s, v: _upload(s, custom_fields=json.dumps({"k": v})),
}


def _access_rows(s: Stack) -> int:
    with s.live.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(AccessLog)).scalar_one()


def _assert_error_shape(r: httpx.Response) -> None:
    body = r.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)


def _assert_refused_and_healthy(s: Stack, send: Send, value: str) -> None:
    before = _access_rows(s)
    r = send(s, value)
    assert r.status_code in (400, 422), (r.status_code, r.text[:300])
    _assert_error_shape(r)
    assert _access_rows(s) == before + 1, "the refused mutation has no access-log row"
    # The service stays healthy: a good mutation right after succeeds.
    good = s.client.patch(f"/v1/namespaces/{NS}", json={"description": "fine"})
    assert good.status_code == 200, good.text


_SETTINGS = settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("field", sorted(FIELDS))
@_SETTINGS
@given(value=HOSTILE)
def test_hostile_json_field_is_refused(stack: Stack, field: str, value: str) -> None:
    _assert_refused_and_healthy(stack, FIELDS[field], value)


@pytest.mark.parametrize("field", sorted(FORM_FIELDS))
@_SETTINGS
@given(value=HOSTILE_FORM)
def test_hostile_form_field_is_refused(stack: Stack, field: str, value: str) -> None:
    _assert_refused_and_healthy(stack, FORM_FIELDS[field], value)


@pytest.mark.parametrize("field", sorted({**FIELDS, **FORM_FIELDS}))
@settings(_SETTINGS, max_examples=4)
@given(value=UNUSUAL)
def test_unusual_unicode_never_fails_the_server(stack: Stack, field: str, value: str) -> None:
    r = {**FIELDS, **FORM_FIELDS}[field](stack, value)
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        _assert_error_shape(r)


def test_nul_in_a_filter_is_a_400_not_a_500(stack: Stack) -> None:
    """A query parameter the route passes to the database unchecked: the ``DataError``
    mapping is the last line."""
    for params in ({"search": "a\x00b"}, {"namespace": "a\x00"}, {"base_model": "b\x00"}):
        r = stack.client.get("/v1/adapters", params=params)
        assert r.status_code in (200, 400), (params, r.status_code, r.text[:300])
        if r.status_code == 400:
            _assert_error_shape(r)
    r = stack.client.get("/v1/fleet", params={"base_model": "b\x00"})
    assert r.status_code in (400, 404), r.text[:300]
    assert stack.client.get("/v1/adapters").status_code == 200


def test_an_access_log_that_cannot_be_written_changes_no_answer(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If even the sanitized access-log row fails, the request keeps its own status and the
    lost row is logged at error level."""
    from structlog.testing import capture_logs

    from store.api import deps

    def broken(*args: Any, **kwargs: Any) -> None:
        raise sa.exc.DataError("INSERT", {}, Exception("refused"))

    monkeypatch.setattr(deps.audit, "record_access", broken)
    with capture_logs() as logs:
        refused = _send(stack, "PATCH", f"/v1/namespaces/{NS}", {"description": "a\x00"})
        good = stack.client.patch(f"/v1/namespaces/{NS}", json={"description": "fine"})
    assert refused.status_code == 422, refused.text
    _assert_error_shape(refused)
    assert good.status_code == 200, good.text
    lost = [e for e in logs if e["event"] == "access_log.write_failed"]
    assert len(lost) == 2 and all(e["log_level"] == "error" for e in lost), logs
