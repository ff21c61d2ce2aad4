"""Tenancy and audit over real HTTP: roles, tenant isolation (404, never 403, across
tenants), token minting, the access log, and refusing an unmigrated database."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry
from support.tiny import tiny_hf_config

from store.api import create_app
from store.auth import ensure_admin_token
from store.client import ApiError
from store.errors import DatabaseNotMigrated
from store.models import AccessLog
from store.settings import StoreSettings

BASE = "tiny"


@pytest.fixture
def two_tenants(live_registry: LiveRegistry, tmp_path: Path) -> dict[str, str]:
    """Namespaces ``a`` (manual) and ``b`` (auto), one pending adapter in each."""
    admin = live_registry.admin
    admin.register_base_model(BASE, tiny_hf_config())
    admin.create_namespace("a", approval_policy="manual")
    admin.create_namespace("b", approval_policy="manual")
    ids = {}
    for ns, seed in (("a", 1), ("b", 2)):
        src = write_hf_peft(random_adapter(seed=seed), tmp_path / ns)
        ids[ns] = admin.upload_adapter(
            src, namespace=ns, name="bot", version="1.0.0", base_model=BASE
        )["id"]
    return ids


def _error(fn, *args, **kwargs) -> tuple[int, str, str]:
    with pytest.raises(ApiError) as err:
        fn(*args, **kwargs)
    return err.value.status, err.value.code, err.value.message


def test_reader_of_a_cannot_learn_that_b_exists(
    live_registry: LiveRegistry, two_tenants: dict[str, str]
) -> None:
    reader = live_registry.client(live_registry.admin.create_token("reader", "a", "dash"))
    assert reader.get_adapter(two_tenants["a"])["namespace"] == "a"
    hidden = _error(reader.get_adapter, two_tenants["b"])
    absent = _error(reader.get_adapter, "ad_" + "0" * 32)
    assert hidden[0] == absent[0] == 404
    assert hidden[2].replace(two_tenants["b"], "X") == absent[2].replace("ad_" + "0" * 32, "X")
    assert _error(reader.get_version, "b", "bot", "1.0.0")[0] == 404
    assert _error(reader.list_versions, "b", "bot")[0] == 404
    assert _error(reader.get_namespace, "b")[0] == 404
    files_of_b = f"/v1/adapters/{two_tenants['b']}/files/adapter_config.json"
    assert _error(reader.request, "GET", files_of_b)[0] == 404
    listing = reader.list_adapters()
    assert {a["namespace"] for a in listing["data"]} == {"a"}
    assert listing["pagination"]["total"] == 1
    assert [ns["name"] for ns in reader.list_namespaces()["data"]] == ["a"]
    assert reader.list_adapters(namespace="b")["pagination"]["total"] == 0


def test_roles_bound_what_a_token_may_change(
    live_registry: LiveRegistry, two_tenants: dict[str, str], tmp_path: Path
) -> None:
    admin = live_registry.admin
    reader = live_registry.client(admin.create_token("reader", "a", "dash"))
    writer = live_registry.client(admin.create_token("writer", "a", "ci"))
    assert _error(reader.set_status, two_tenants["a"], "ready")[:2] == (403, "forbidden")
    assert _error(writer.set_status, two_tenants["b"], "ready")[0] == 404
    assert writer.set_status(two_tenants["a"], "ready")["status"] == "ready"
    src = write_hf_peft(random_adapter(seed=9), tmp_path / "new")
    up = writer.upload_adapter(src, namespace="a", name="new", version="0.1.0", base_model=BASE)
    assert up["status"] == "pending"
    status, code, _ = _error(
        writer.upload_adapter, src, namespace="b", name="new", version="0.1.0", base_model=BASE
    )
    assert (status, code) == (404, "not_found")
    assert _error(writer.create_namespace, "c")[:2] == (403, "forbidden")
    assert _error(writer.register_base_model, "other", tiny_hf_config())[0] == 403
    assert _error(writer.create_token, "reader", "a", "x")[0] == 403
    assert _error(writer.update_namespace, "a", approval_policy="auto")[0] == 403


def test_namespace_admin_mints_only_its_own_tokens(
    live_registry: LiveRegistry, two_tenants: dict[str, str]
) -> None:
    ns_admin = live_registry.client(live_registry.admin.create_token("admin", "a", "owner"))
    token = ns_admin.create_token("reader", "a", "dash")
    assert live_registry.client(token).get_adapter(two_tenants["a"])["id"] == two_tenants["a"]
    assert _error(ns_admin.create_token, "reader", "b", "x")[0] == 404
    assert _error(ns_admin.create_token, "reader", None, "global")[0] == 403
    assert _error(live_registry.admin.create_token, "root", "a", "x")[0] == 422
    assert _error(live_registry.admin.create_token, "reader", "nowhere", "x")[0] == 404


def _coordinates(alias: dict) -> str:
    return f"{alias['namespace']}/{alias['name']}@{alias['alias']}"


def test_global_reader_sees_every_tenant_in_the_fleet(
    live_registry: LiveRegistry, two_tenants: dict[str, str]
) -> None:
    admin = live_registry.admin
    for adapter_id in two_tenants.values():
        admin.set_status(adapter_id, "ready")
    admin.set_alias("b", "bot", "stable", [("1.0.0", 100)])
    engine = live_registry.client(admin.create_token("reader", None, "engine-1"))
    everything = engine.fleet(BASE)  # rendered and kept for this generation first
    assert {a["namespace"] for a in everything["adapters"]} == {"a", "b"}
    assert {_coordinates(a) for a in everything["aliases"]} == {
        "a/bot@latest",
        "b/bot@latest",
        "b/bot@stable",
    }
    tenant = live_registry.client(admin.create_token("reader", "a", "dash"))
    mine = tenant.fleet(BASE)  # same generation, another caller: never the kept answer
    assert {a["namespace"] for a in mine["adapters"]} == {"a"}
    assert {_coordinates(a) for a in mine["aliases"]} == {"a/bot@latest"}  # b's names hidden
    assert mine["generation"] == everything["generation"]
    assert engine.fleet(BASE) == everything  # unchanged generation: the same answer
    assert _error(engine.set_status, two_tenants["a"], "archived")[0] == 403

    # Every change of serving state moves the generation, and with it the answer.
    admin.set_pinned(two_tenants["b"], True)
    pinned = engine.fleet(BASE)
    assert pinned["generation"] > everything["generation"]
    assert [a["pinned"] for a in pinned["adapters"] if a["namespace"] == "b"] == [True]
    admin.set_status(two_tenants["a"], "archived")
    archived = engine.fleet(BASE)
    assert {a["namespace"] for a in archived["adapters"]} == {"b"}
    assert tenant.fleet(BASE)["adapters"] == [] and tenant.fleet(BASE)["aliases"] == []


def test_downloads_and_mutations_are_in_the_access_log(
    live_registry: LiveRegistry, two_tenants: dict[str, str]
) -> None:
    admin = live_registry.admin
    writer = live_registry.client(admin.create_token("writer", "a", "ci"))
    writer.set_status(two_tenants["a"], "ready")
    writer.request("GET", f"/v1/adapters/{two_tenants['a']}/files/adapter_config.json")
    _error(writer.set_status, two_tenants["a"], "rejected")  # illegal: logged as failed
    with live_registry.engine.connect() as conn:
        rows = conn.execute(sa.select(AccessLog).order_by(AccessLog.id)).all()
    by_action = {(r.action, r.outcome): r for r in rows}
    approve = by_action[("adapter.ready", "ok")]
    assert approve.actor == "token:ci@a" and approve.target == two_tenants["a"]
    assert approve.namespace == "a" and approve.remote_addr == "127.0.0.1"
    download = by_action[("adapter.download", "ok")]
    assert download.target.startswith(two_tenants["a"]) and download.actor == "token:ci@a"
    assert ("adapter.rejected", "illegal_transition") in by_action
    assert ("adapter.upload", "ok") in by_action and ("namespace.create", "ok") in by_action


def test_unmigrated_database_is_refused_at_startup(tmp_path: Path) -> None:
    settings = StoreSettings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(DatabaseNotMigrated, match="lorafleet db upgrade"):
        create_app(settings)


def test_embedded_admin_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    token, generated = ensure_admin_token(StoreSettings(home=tmp_path))
    again, generated_again = ensure_admin_token(StoreSettings(home=tmp_path))
    assert generated and not generated_again and token == again
    mode = stat.S_IMODE((tmp_path / "admin-token").stat().st_mode)
    assert mode == 0o600
    assert ensure_admin_token(StoreSettings(home=tmp_path, admin_token="set")) == ("set", False)
