"""What can be stored is servable (issue 12, class 4), over real HTTP on SQLite and
PostgreSQL.

Hypothesis builds JSON values (any nesting up to past the stored bound of 32 levels, big and
small numbers, unusual strings) and writes them as an adapter's ``custom_fields`` by PATCH
and by upload. Each write is either refused with a typed 4xx, or accepted, and then every
read route answers 200 with the value back: GET the version, the namespace's list, the
version list of its name, the fleet view and a global reader's list. Before the bound a
value nested past the serializer's limit was committed and every one of those answered 500,
for every tenant.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.factories import random_adapter, write_hf_peft
from support.live_api import directory_files, fresh_database, serve_registry, upload
from support.tiny import tiny_hf_config

from events.untrusted import STORED_JSON

NS, BASE = "acme", "tiny"
_serial = itertools.count(1)

_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=10)
_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**19), 10**19),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
)
_tree = st.recursive(
    _leaf,
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(_text, c, max_size=3)),
    max_leaves=12,
)


def _nest(value: Any, depth: int) -> dict[str, Any]:
    for _ in range(depth):
        value = {"n": value}
    return value if isinstance(value, dict) else {"v": value}


VALUES = st.tuples(_tree, st.integers(0, 60)).map(lambda t: _nest(*t))


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp(f"roundtrip-{request.param}")
    source = write_hf_peft(random_adapter(rank=2, modules=("q_proj", "v_proj")), root / "ok")
    files = directory_files(source)
    with fresh_database(request.param, root) as url, serve_registry(url, root) as live:
        with live.http(live.admin_token) as admin:
            r = admin.post("/v1/base-models", json={"name": BASE, "config": tiny_hf_config()})
            assert r.status_code == 201, r.text
            r = admin.post("/v1/namespaces", json={"name": NS, "approval_policy": "auto"})
            assert r.status_code == 201, r.text
            r = admin.post("/v1/tokens", json={"role": "reader", "name": "global-reader"})
            assert r.status_code == 201, r.text
            with live.http(r.json()["token"]) as reader:
                yield admin, reader, files


def _reads(admin: httpx.Client, reader: httpx.Client, adapter_id: str, name: str) -> list:
    return [
        admin.get(f"/v1/adapters/{adapter_id}"),
        admin.get("/v1/adapters", params={"namespace": NS}),
        admin.get(f"/v1/adapters/{NS}/{name}"),
        admin.get("/v1/fleet", params={"base_model": BASE}),
        reader.get("/v1/adapters"),
        reader.get(f"/v1/adapters/{adapter_id}"),
    ]


def _assert_served(admin, reader, adapter_id: str, name: str, value: Any) -> None:
    for r in _reads(admin, reader, adapter_id, name):
        assert r.status_code == 200, (r.request.url, r.status_code, r.text[:300])
    got = admin.get(f"/v1/adapters/{adapter_id}").json()["custom_fields"]
    assert got == value


_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))


@_SETTINGS
@given(value=VALUES)
def test_a_patched_value_is_refused_or_served_by_every_read_route(api, value) -> None:
    admin, reader, files = api
    name = f"p{next(_serial)}"
    r = upload(admin, files, namespace=NS, name=name, version="1.0.0", base_model=BASE)
    assert r.status_code == 201, r.text
    adapter_id, before = r.json()["id"], r.json()["custom_fields"]
    r = admin.patch(f"/v1/adapters/{adapter_id}", json={"custom_fields": value})
    if _depth(value) + 1 > STORED_JSON.max_depth:  # the body's own level counts too
        assert r.status_code in (400, 422), (r.status_code, r.text[:300])
        assert r.json()["error"]["code"] in ("invalid_body", "bad_request")
        value = before  # nothing changed
    else:
        assert r.status_code == 200, (r.status_code, r.text[:300])
    _assert_served(admin, reader, adapter_id, name, value)


@_SETTINGS
@given(value=VALUES)
def test_an_uploaded_value_is_refused_or_served_by_every_read_route(api, value) -> None:
    admin, reader, files = api
    name = f"u{next(_serial)}"
    r = upload(
        admin, files, namespace=NS, name=name, version="1.0.0", base_model=BASE,
        custom_fields=json.dumps(value),
    )  # fmt: skip
    if _depth(value) > STORED_JSON.max_depth:
        assert r.status_code == 400, (r.status_code, r.text[:300])
        for read in _reads(admin, reader, "missing", name)[1:2] + [reader.get("/v1/adapters")]:
            assert read.status_code == 200, read.text[:300]
        return
    assert r.status_code == 201, (r.status_code, r.text[:300])
    _assert_served(admin, reader, r.json()["id"], name, value)
