"""Aliases and pins over the REST API (real HTTP, SQLite and PostgreSQL): CRUD and the
validation table, history, the access log, the writer role, tenancy (another tenant's adapter
or alias is the same 404 as a missing one), 409 ``alias_target`` and its drop flag on every
route that takes a version out of ready, ``PATCH {"pinned"}`` and ``GET /v1/fleet``."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import Session
from support.live_api import LiveRegistry
from support.tiny import tiny_hf_config

from store import registry
from store.models import AccessLog, Provenance
from store.outbox import current_generation
from store.tenancy import create_namespace, register_base_model

BASE = "tiny-llama"
ALIASES = "/v1/adapters/acme/bot/aliases"


def _version(live: LiveRegistry, make_package, ns: str, version: str, seed: int) -> str:
    with Session(live.engine) as session:
        row, _ = registry.commit_version(
            session,
            make_package(seed),
            namespace=ns,
            name="bot",
            version=version,
            base_model=BASE,
            provenance=Provenance(),
            actor="trainer",
        )
        session.commit()
        return row.id


@pytest.fixture
def world(live_registry: LiveRegistry, make_package) -> dict[str, str]:
    """Namespaces ``acme`` (auto: 1.2.0, 1.3.0 ready) and ``bank`` (manual: 1.0.0
    pending), and their ids."""
    with Session(live_registry.engine) as session:
        register_base_model(session, BASE, tiny_hf_config(), actor="admin")
        create_namespace(session, "acme", approval_policy="auto", actor="admin")
        create_namespace(session, "bank", approval_policy="manual", actor="admin")
        session.commit()
    return {
        "1.2.0": _version(live_registry, make_package, "acme", "1.2.0", 1),
        "1.3.0": _version(live_registry, make_package, "acme", "1.3.0", 2),
        "bank": _version(live_registry, make_package, "bank", "1.0.0", 3),
    }


@pytest.fixture
def admin(live_registry: LiveRegistry) -> Iterator[httpx.Client]:
    with live_registry.http(live_registry.admin_token) as client:
        yield client


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text
    return response.json()["error"]["message"]


def split(*pairs: tuple[str, int]) -> dict:
    return {"targets": [{"version": v, "weight": w} for v, w in pairs]}


def test_alias_crud_and_history(live_registry, world, admin):
    r = admin.put(f"{ALIASES}/stable", json=split(("1.2.0", 100)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["coordinates"] == "acme/bot@stable"
    assert (body["revision"], body["implicit"], body["pinned"]) == (1, False, False)
    assert body["targets"] == [{"version": "1.2.0", "adapter_id": world["1.2.0"], "weight": 100}]
    assert body["generation"] == current_generation_of(live_registry)

    r = admin.put(f"{ALIASES}/stable", json=split(("1.2.0", 90), ("1.3.0", 10)))
    assert r.json()["revision"] == 2
    assert admin.get(f"{ALIASES}/stable").json()["targets"][1]["weight"] == 10
    listed = admin.get(ALIASES).json()["data"]
    assert [(a["alias"], a["implicit"]) for a in listed] == [("stable", False), ("latest", True)]
    assert listed[1]["targets"][0]["version"] == "1.3.0"
    assert admin.get(f"{ALIASES}/latest").json()["targets"][0]["adapter_id"] == world["1.3.0"]

    r = admin.delete(f"{ALIASES}/stable")
    assert r.json() == {"object": "alias", "coordinates": "acme/bot@stable", "deleted": True}
    _error(admin.get(f"{ALIASES}/stable"), 404, "not_found")
    _error(admin.delete(f"{ALIASES}/stable"), 404, "not_found")
    history = admin.get(f"{ALIASES}/stable/history").json()
    assert [(h["revision"], h["action"]) for h in history["data"]] == [
        (1, "set"),
        (2, "set"),
        (3, "delete"),
    ]
    assert history["data"][2]["targets"] is None
    assert history["data"][0]["actor"] == "admin"
    gens = [h["generation"] for h in history["data"]]
    assert gens == sorted(gens) and len(set(gens)) == 3


def current_generation_of(live: LiveRegistry) -> int:
    with Session(live.engine) as session:
        return current_generation(session)


@pytest.mark.parametrize(
    ("alias", "body", "status", "code"),
    [
        ("1.2.0", split(("1.2.0", 100)), 400, "invalid_alias"),
        ("v1.3.0", split(("1.2.0", 100)), 400, "invalid_alias"),
        ("latest", split(("1.2.0", 100)), 400, "invalid_alias"),
        ("Stable", split(("1.2.0", 100)), 400, "invalid_alias"),
        ("stable", split(("9.9.9", 100)), 400, "invalid_alias_target"),
        ("stable", split(("1.2.0", 50), ("1.2.0", 50)), 400, "invalid_alias_target"),
        ("stable", split(("1.2.0", 50), ("1.3.0", 40)), 400, "invalid_alias_target"),
        ("stable", split(("1.2.0", 0)), 422, "invalid_body"),
        ("stable", split(("1.2.0", 101)), 422, "invalid_body"),
        ("stable", {"targets": []}, 422, "invalid_body"),
        ("stable", {"targets": [{"version": "1.2.0", "weight": 100}], "x": 1}, 422, "invalid_body"),
    ],
)
def test_validation_table(live_registry, world, admin, alias, body, status, code):
    _error(admin.put(f"{ALIASES}/{alias}", json=body), status, code)
    assert admin.get(ALIASES).json()["data"][0]["alias"] == "latest"  # nothing stored


def test_a_pending_target_is_refused(live_registry, world, admin):
    message = _error(
        admin.put("/v1/adapters/bank/bot/aliases/stable", json=split(("1.0.0", 100))),
        400,
        "invalid_alias_target",
    )
    assert "bank/bot@1.0.0 is pending" in message
    # bank has no ready version: no implicit latest either.
    assert admin.get("/v1/adapters/bank/bot/aliases").json()["data"] == []
    _error(admin.get("/v1/adapters/bank/bot/aliases/latest"), 404, "not_found")


def test_writer_role_and_tenancy(live_registry, world, admin):
    admin.put(f"{ALIASES}/stable", json=split(("1.2.0", 100)))
    reader = live_registry.mint("reader", "acme", "acme-reader")
    writer = live_registry.mint("writer", "acme", "acme-writer")
    other = live_registry.mint("admin", "bank", "bank-admin")
    with live_registry.http(reader) as c:
        assert c.get(f"{ALIASES}/stable").status_code == 200
        _error(c.put(f"{ALIASES}/canary", json=split(("1.3.0", 100))), 403, "forbidden")
        _error(c.delete(f"{ALIASES}/stable"), 403, "forbidden")
    with live_registry.http(writer) as c:
        assert c.put(f"{ALIASES}/canary", json=split(("1.3.0", 100))).status_code == 200
    with live_registry.http(other) as c:
        # acme's adapter and alias, and a missing one: the same 404, word for word.
        for path, missing in (
            (f"{ALIASES}/stable", "/v1/adapters/acme/nobot/aliases/stable"),
            (ALIASES, "/v1/adapters/acme/nobot/aliases"),
            (f"{ALIASES}/stable/history", "/v1/adapters/acme/nobot/aliases/stable/history"),
        ):
            seen = _error(c.get(path), 404, "not_found")
            assert seen.replace("acme/bot", "X") == _error(
                c.get(missing), 404, "not_found"
            ).replace("acme/nobot", "X")
        a = _error(c.put(f"{ALIASES}/stable", json=split(("1.2.0", 100))), 404, "not_found")
        b = _error(
            c.put("/v1/adapters/acme/nobot/aliases/stable", json=split(("1.2.0", 100))),
            404,
            "not_found",
        )
        assert a.replace("acme/bot", "X") == b.replace("acme/nobot", "X")
        _error(c.delete(f"{ALIASES}/stable"), 404, "not_found")
    assert admin.get(f"{ALIASES}/stable").json()["revision"] == 1


def test_every_change_is_in_the_access_log(live_registry, world, admin):
    admin.put(f"{ALIASES}/stable", json=split(("1.2.0", 100)))
    admin.put(f"{ALIASES}/stable", json=split(("1.2.0", 50), ("1.2.0", 50)))
    admin.delete(f"{ALIASES}/stable")
    with Session(live_registry.engine) as session:
        rows = session.execute(
            sa.select(AccessLog).where(AccessLog.action.like("alias.%")).order_by(AccessLog.id)
        ).scalars()
        logged = [(r.action, r.target, r.namespace, r.outcome) for r in rows]
    assert logged == [
        ("alias.set", "acme/bot@stable", "acme", "ok"),
        ("alias.set", "acme/bot@stable", "acme", "invalid_alias_target"),
        ("alias.delete", "acme/bot@stable", "acme", "ok"),
    ]


def test_archive_of_a_target_is_409_on_every_route_unless_dropped(live_registry, world, admin):
    admin.put(f"{ALIASES}/stable", json=split(("1.2.0", 60), ("1.3.0", 40)))
    v12 = world["1.2.0"]
    refusals = [
        admin.patch(f"/v1/adapters/{v12}", json={"status": "archived"}),
        admin.delete(f"/v1/adapters/{v12}"),
        admin.delete(f"/v1/adapters/{v12}", params={"purge": "true"}),
    ]
    for r in refusals:
        assert "acme/bot@stable" in _error(r, 409, "alias_target")
    assert admin.get(f"/v1/adapters/{v12}").json()["status"] == "ready"

    r = admin.patch(f"/v1/adapters/{v12}", json={"status": "archived", "drop_from_aliases": True})
    assert r.json()["status"] == "archived", r.text
    stable = admin.get(f"{ALIASES}/stable").json()
    assert stable["targets"] == [{"version": "1.3.0", "adapter_id": world["1.3.0"], "weight": 100}]
    assert stable["revision"] == 2
    admin.put(f"{ALIASES}/stable", json=split(("1.3.0", 100)))  # no change: still revision 2
    _error(admin.delete(f"/v1/adapters/{world['1.3.0']}"), 409, "alias_target")
    r = admin.delete(f"/v1/adapters/{world['1.3.0']}", params={"drop_from_aliases": "true"})
    assert r.json()["status"] == "archived"
    _error(admin.get(f"{ALIASES}/stable"), 404, "not_found")
    _error(admin.patch(f"/v1/adapters/{v12}", json={"drop_from_aliases": True}), 400, "bad_request")


def test_patch_pinned_and_the_fleet_view(live_registry, world, admin):
    generation = current_generation_of(live_registry)
    r = admin.patch(f"/v1/adapters/{world['1.2.0']}", json={"pinned": True})
    assert r.status_code == 200, r.text
    assert r.json()["pinned"] is True
    assert current_generation_of(live_registry) == generation + 1
    _error(admin.patch(f"/v1/adapters/{world['1.2.0']}", json={"pinned": None}), 400, "bad_request")
    admin.put(f"{ALIASES}/canary", json={**split(("1.3.0", 100)), "pinned": True})

    view = admin.get("/v1/fleet", params={"base_model": BASE}).json()
    assert view["generation"] == current_generation_of(live_registry)
    assert {a["version"]: a["pinned"] for a in view["adapters"]} == {"1.2.0": True, "1.3.0": True}
    assert [(a["alias"], a["implicit"], a["pinned"]) for a in view["aliases"]] == [
        ("canary", False, True),
        ("latest", True, False),
    ]
    ids = {a["id"] for a in view["adapters"]}
    assert all(t["adapter_id"] in ids for a in view["aliases"] for t in a["targets"])
    admin.patch(f"/v1/adapters/{world['1.2.0']}", json={"pinned": False})
    admin.delete(f"{ALIASES}/canary")
    view = admin.get("/v1/fleet", params={"base_model": BASE}).json()
    assert not any(a["pinned"] for a in view["adapters"])
    with Session(live_registry.engine) as session:
        actions = session.execute(
            sa.select(AccessLog.action).where(AccessLog.action.like("adapter.%pin"))
        ).scalars()
        assert list(actions) == ["adapter.pin", "adapter.unpin"]


def test_aliases_of_an_adapter_named_files(live_registry, world, admin, make_package):
    # ``/{ns}/files/aliases...`` is also the download route's path for adapter id ``acme``.
    with Session(live_registry.engine, expire_on_commit=False) as session:
        row, _ = registry.commit_version(
            session,
            make_package(7),
            namespace="acme",
            name="files",
            version="1.0.0",
            base_model=BASE,
            provenance=Provenance(),
            actor="trainer",
        )
        session.commit()
    base = "/v1/adapters/acme/files/aliases"
    assert admin.put(f"{base}/stable", json=split(("1.0.0", 100))).status_code == 200
    assert [a["alias"] for a in admin.get(base).json()["data"]] == ["stable", "latest"]
    assert admin.get(f"{base}/stable").json()["targets"][0]["adapter_id"] == row.id
    assert admin.get(f"{base}/stable/history").json()["data"][0]["action"] == "set"
    _error(admin.get(f"{base}/stable/nothing"), 404, "not_found")
    assert admin.get("/v1/adapters/acme/files/1.0.0").json()["id"] == row.id
