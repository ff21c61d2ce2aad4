"""Tenant isolation over real HTTP, as a matrix: every route x caller x (own, other) namespace.

The callers are tokens scoped to namespace ``acme`` (reader, writer, admin), no token at
all, and the global (bootstrap) admin. "Own" targets live in ``acme``, "other" targets in
``bank``. The expected status of each cell follows from the rules in ``store.auth``:

* public routes (health, metrics) answer everybody; every other route needs a token (401);
* a scoped token that targets another tenant gets 404, exactly as for a thing that does not
  exist (same status, same body once the names are swapped), whatever its role;
* in its own namespace a token gets the route's success status if its role suffices, else 403;
* routes only a global admin may use (new namespaces, base models, global tokens) are 403
  for every scoped token;
* listings (adapters, namespaces, fleet) answer 200 but never contain another tenant's rows.
* an alias (list, ``latest``, history, PUT, DELETE) is scoped like the adapter it names.

Mutating cells get a fresh target adapter each, and a refused mutation must leave it as it was.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlmodel import Session
from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry, directory_files, fresh_database, serve_registry, upload
from support.tiny import tiny_hf_config

from store import packaging, registry
from store.models import AdapterVersion, Package, PackageFile, Provenance

BASE = "tiny"
OWN, OTHER = "acme", "bank"
ROLES = ("anonymous", "reader", "writer", "admin", "global_admin")
_RANK = {"reader": 1, "writer": 2, "admin": 3}
_serial = itertools.count(1)


@dataclass(frozen=True)
class Target:
    """What a cell aims at: a namespace, an adapter in it, and that adapter's coordinates."""

    namespace: str
    adapter_id: str
    name: str = "bot"
    version: str = "1.0.0"


# A target that exists nowhere: the 404 every hidden target must be indistinguishable from.
MISSING = Target("ghostns", "ad_" + "f" * 32, "nosuch", "9.9.9")


@dataclass
class Tenancy:
    stack: LiveRegistry
    tokens: dict[str, str | None]
    seeded: dict[str, Target]  # namespace -> its ready, uploaded adapter
    files: list[tuple[str, bytes]]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def tenancy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Namespaces acme and bank (manual approval), each with one ready uploaded adapter, and a
    token of every role scoped to acme."""
    root = tmp_path_factory.mktemp(f"tenancy-{request.param}")
    source = write_hf_peft(random_adapter(rank=2, modules=("q_proj", "v_proj")), root / "adapter")
    files = directory_files(source)
    with fresh_database(request.param, root) as url, serve_registry(url, root) as stack:
        with stack.http(stack.admin_token) as admin:
            r = admin.post("/v1/base-models", json={"name": BASE, "config": tiny_hf_config()})
            assert r.status_code == 201, r.text
            seeded = {}
            for ns in (OWN, OTHER):
                r = admin.post("/v1/namespaces", json={"name": ns, "approval_policy": "manual"})
                assert r.status_code == 201, r.text
                r = upload(admin, files, namespace=ns, name="bot", version="1.0.0", base_model=BASE)
                assert r.status_code == 201 and r.json()["status"] == "pending", r.text
                r = admin.patch(f"/v1/adapters/{r.json()['id']}", json={"status": "ready"})
                assert r.status_code == 200, r.text
                seeded[ns] = Target(ns, r.json()["id"])
        tokens: dict[str, str | None] = {"anonymous": None, "global_admin": stack.admin_token}
        for role in ("reader", "writer", "admin"):
            tokens[role] = stack.mint(role, OWN, f"{role}-of-acme")
        yield Tenancy(stack, tokens, seeded, files)


def fresh_adapter(stack: LiveRegistry, namespace: str, *, ready: bool = False) -> Target:
    """A new pending (or ready) version in ``namespace``, made through the registry service;
    its files are never read, so they are not stored."""
    n = next(_serial)
    original = PackageFile("w.bin", "original", f"{n:064x}", 10, f"sha256/{n:064x}")
    package = Package(
        source_format="hf_peft",
        rank=2,
        alpha=4.0,
        target_modules=["q_proj"],
        files=(original,),
        manifest={"n": n},
        manifest_sha256=f"{n:064x}",
        content_sha256=packaging.content_digest({"w.bin": original.sha256}),
    )
    with Session(stack.engine, expire_on_commit=False) as session:
        version, _ = registry.commit_version(
            session,
            package,
            namespace=namespace,
            name=f"fresh-{n}",
            version="1.0.0",
            base_model=BASE,
            provenance=Provenance(),
            actor="setup",
        )
        if ready:
            registry.approve(session, version.id, actor="setup")
        session.commit()
        return Target(namespace, version.id, version.name, version.version)


def row_state(stack: LiveRegistry, adapter_id: str) -> dict[str, Any] | None:
    with Session(stack.engine) as session:
        row = session.get(AdapterVersion, adapter_id)
        return None if row is None else row.model_dump()


# --- the routes ---------------------------------------------------------------------------

Call = Callable[[httpx.Client, Target, Tenancy], httpx.Response]


@dataclass(frozen=True)
class Route:
    """One API route: how to call it and who may.

    ``needs``: ``public`` | ``reader`` | ``writer`` | ``admin`` (of the namespace) |
    ``global_admin``. ``scoped``: the route names a namespace or an adapter, so a scoped
    token aimed at the other tenant gets 404. ``fresh``: None, ``pending`` or ``ready`` -
    the cell needs its own adapter to change.
    """

    name: str
    call: Call
    needs: str
    ok: int = 200
    scoped: bool = True
    fresh: str | None = None


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


ROUTES = [
    Route("health_live", lambda c, t, x: c.get("/v1/health/live"), "public", scoped=False),
    Route("health_ready", lambda c, t, x: c.get("/v1/health/ready"), "public", scoped=False),
    Route("metrics", lambda c, t, x: c.get("/metrics"), "public", scoped=False),
    Route("fleet", lambda c, t, x: c.get("/v1/fleet", params={"base_model": BASE}), "reader",
          scoped=False),
    Route("list_namespaces", lambda c, t, x: c.get("/v1/namespaces"), "reader", scoped=False),
    Route("get_namespace", lambda c, t, x: c.get(f"/v1/namespaces/{t.namespace}"), "reader"),
    Route("patch_namespace",
          lambda c, t, x: c.patch(f"/v1/namespaces/{t.namespace}", json={"description": "d"}),
          "admin"),
    Route("create_namespace",
          lambda c, t, x: c.post("/v1/namespaces", json={"name": _unique("ns")}),
          "global_admin", ok=201, scoped=False),
    Route("list_base_models", lambda c, t, x: c.get("/v1/base-models"), "reader", scoped=False),
    Route("get_base_model", lambda c, t, x: c.get(f"/v1/base-models/{BASE}"), "reader",
          scoped=False),
    Route("register_base_model",
          lambda c, t, x: c.post("/v1/base-models",
                                 json={"name": _unique("bm-"), "config": tiny_hf_config()}),
          "global_admin", ok=201, scoped=False),
    Route("mint_namespace_token",
          lambda c, t, x: c.post("/v1/tokens", json={"role": "reader", "namespace": t.namespace,
                                                     "name": _unique("t")}),
          "admin", ok=201),
    Route("mint_global_token",
          lambda c, t, x: c.post("/v1/tokens", json={"role": "reader", "namespace": None,
                                                     "name": _unique("t")}),
          "global_admin", ok=201, scoped=False),
    Route("upload",
          lambda c, t, x: upload(c, x.files, namespace=t.namespace, name="up",
                                 version=f"0.{next(_serial)}.0", base_model=BASE),
          "writer", ok=201),
    Route("upload_check",
          lambda c, t, x: c.get("/v1/adapters/upload-check",
                                params={"namespace": t.namespace, "name": "up",
                                        "version": "9.9.9", "base_model": BASE}),
          "writer"),
    Route("list_adapters",
          lambda c, t, x: c.get("/v1/adapters", params={"namespace": t.namespace}), "reader",
          scoped=False),
    Route("list_all_adapters", lambda c, t, x: c.get("/v1/adapters"), "reader", scoped=False),
    Route("get_adapter", lambda c, t, x: c.get(f"/v1/adapters/{t.adapter_id}"), "reader"),
    Route("download_file",
          lambda c, t, x: c.get(f"/v1/adapters/{t.adapter_id}/files/adapter_config.json"),
          "reader"),
    Route("list_versions", lambda c, t, x: c.get(f"/v1/adapters/{t.namespace}/{t.name}"),
          "reader"),
    Route("get_version",
          lambda c, t, x: c.get(f"/v1/adapters/{t.namespace}/{t.name}/{t.version}"), "reader"),
    Route("approve",
          lambda c, t, x: c.patch(f"/v1/adapters/{t.adapter_id}", json={"status": "ready"}),
          "writer", fresh="pending"),
    Route("reject",
          lambda c, t, x: c.patch(f"/v1/adapters/{t.adapter_id}", json={"status": "rejected"}),
          "writer", fresh="pending"),
    Route("edit_metadata",
          lambda c, t, x: c.patch(f"/v1/adapters/{t.adapter_id}",
                                  json={"description": "x", "custom_fields": {"k": 1}}),
          "writer", fresh="pending"),
    Route("archive", lambda c, t, x: c.delete(f"/v1/adapters/{t.adapter_id}"), "writer",
          fresh="ready"),
    Route("purge",
          lambda c, t, x: c.delete(f"/v1/adapters/{t.adapter_id}", params={"purge": "true"}),
          "admin", fresh="pending"),
    Route("list_aliases", lambda c, t, x: c.get(_aliases(t)), "reader"),
    Route("get_alias_latest", lambda c, t, x: c.get(f"{_aliases(t)}/latest"), "reader"),
    Route("alias_history", lambda c, t, x: c.get(f"{_aliases(t, _alias(x, t))}/history"),
          "reader"),
    Route("put_alias",
          lambda c, t, x: c.put(_aliases(t, "canary"), json={"targets": [{"version": t.version}]}),
          "writer"),
    Route("delete_alias", lambda c, t, x: c.delete(_aliases(t, _alias(x, t))), "writer"),
]  # fmt: skip


def _aliases(t: Target, alias: str | None = None) -> str:
    path = f"/v1/adapters/{t.namespace}/{t.name}/aliases"
    return path if alias is None else f"{path}/{alias}"


def _alias(x: Tenancy, t: Target) -> str:
    """Alias ``stable`` of ``t`` (on its version, set by the global admin) when ``t``
    exists; the same name for the missing target, so the two 404s compare."""
    if t is not MISSING:
        x.stack.admin.set_alias(t.namespace, t.name, "stable", [(t.version, 100)])
    return "stable"


def expected_status(route: Route, role: str, own: bool) -> int:
    """The one status the table above promises for this cell."""
    if route.needs == "public":
        return 200
    if role == "anonymous":
        return 401
    if role == "global_admin":
        return route.ok
    if route.needs == "global_admin":
        return 403
    if route.scoped and not own:
        return 404
    return route.ok if _RANK[role] >= _RANK[route.needs] else 403


def _cells() -> Iterator[Any]:
    for route in ROUTES:
        for role in ROLES:
            for own in (True, False):
                status = expected_status(route, role, own)
                cell_id = f"{route.name}-{role}-{'own' if own else 'other'}-{status}"
                yield pytest.param(route, role, own, status, id=cell_id)


def _normalized(response: httpx.Response, target: Target) -> Any:
    text = response.text
    for value, placeholder in (
        (target.adapter_id, "<id>"),
        (f"{target.namespace}/{target.name}@{target.version}", "<coords>"),
        (f"{target.namespace}/{target.name}", "<ns>/<name>"),
        (f"'{target.namespace}'", "'<ns>'"),
    ):
        text = text.replace(value, placeholder)
    return response.headers.get("content-type"), text


def _check_listing(route: Route, role: str, body: dict, tenancy: Tenancy, own: bool) -> None:
    """A 200 listing shows exactly what the caller may see."""
    sees_all = role == "global_admin"
    if route.name == "fleet":
        namespaces = {a["namespace"] for a in body["adapters"]}
        ids = {a["id"] for a in body["adapters"]}
        assert namespaces == ({OWN, OTHER} if sees_all else {OWN})
        assert tenancy.seeded[OWN].adapter_id in ids
        assert (tenancy.seeded[OTHER].adapter_id in ids) is sees_all
    elif route.name == "list_namespaces":
        names = {ns["name"] for ns in body["data"]}
        assert (OTHER in names) is sees_all and OWN in names
        assert sees_all or names == {OWN}
    elif route.name in ("list_adapters", "list_all_adapters"):
        namespaces = {a["namespace"] for a in body["data"]}
        assert body["pagination"]["total"] >= len(body["data"])
        if sees_all:
            assert namespaces == ({OWN, OTHER} if route.name.endswith("all_adapters") else
                                  {OWN if own else OTHER})  # fmt: skip
        elif route.name == "list_adapters" and not own:
            assert body["data"] == [] and body["pagination"]["total"] == 0
        else:
            assert namespaces == {OWN} and body["pagination"]["total"] >= 1
    elif route.name == "metrics":
        # Aggregate numbers only: no tenant name or adapter id in the exposition.
        for secret in (OTHER, OWN, tenancy.seeded[OTHER].adapter_id):
            assert secret not in body["text"]


@pytest.mark.parametrize(("route", "role", "own", "status"), list(_cells()))
def test_tenancy_matrix(tenancy: Tenancy, route: Route, role: str, own: bool, status: int) -> None:
    stack = tenancy.stack
    namespace = OWN if own else OTHER
    if route.fresh:
        target = fresh_adapter(stack, namespace, ready=route.fresh == "ready")
    else:
        target = tenancy.seeded[namespace]
    before = row_state(stack, target.adapter_id)
    with stack.http(tenancy.tokens[role]) as client:
        response = route.call(client, target, tenancy)
        assert response.status_code == status, response.text
        if status >= 400:
            assert (
                response.json()["error"]["code"]
                == {
                    401: "unauthorized",
                    403: "forbidden",
                    404: "not_found",
                }[status]
            )
            if route.fresh:  # a refused change changes nothing
                assert row_state(stack, target.adapter_id) == before
        if status == 404:
            # The hidden target is indistinguishable from one that does not exist at all.
            ghost = route.call(client, MISSING, tenancy)
            assert ghost.status_code == 404
            assert _normalized(response, target) == _normalized(ghost, MISSING)
    if status == 200 and route.scoped is False:
        body = {"text": response.text} if route.name == "metrics" else response.json()
        _check_listing(route, role, body, tenancy, own)
    if status in (200, 201) and route.fresh:
        after = row_state(stack, target.adapter_id)
        if route.name == "purge":
            assert after is None
        else:
            expected = {"approve": "ready", "reject": "rejected", "archive": "archived"}
            assert after is not None
            assert after["status"] == expected.get(route.name, before["status"])
            assert after["updated_by"] != "setup"
