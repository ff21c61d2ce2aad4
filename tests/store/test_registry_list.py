"""The read side: listing with filters, sort, pagination and visibility; the fleet view."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from store import registry
from store.catalog import fleet_state, get_version, list_adapters, list_versions
from store.errors import BadRequest
from store.models import Provenance


@pytest.fixture
def catalog(session: Session, auto_ns, manual_ns, base_model, make_package) -> dict[str, list]:
    """acme (auto): chat-0..chat-5 ready; bank (manual): summarize-0..3 pending, one rejected."""
    made: dict[str, list] = {"acme": [], "bank": []}
    seed = 0
    for ns, stem, n in (("acme", "chat", 6), ("bank", "summarize", 4)):
        for i in range(n):
            seed += 1
            version, _ = registry.commit_version(
                session,
                make_package(seed),
                namespace=ns,
                name=f"{stem}-{i}",
                version="1.0.0",
                base_model=base_model,
                provenance=Provenance(),
                actor="t",
            )
            made[ns].append(version)
    registry.reject(session, made["bank"][0].id, actor="t")
    return made


def test_filters_and_total(session, catalog) -> None:
    rows, total = list_adapters(session, namespaces=None, namespace="bank", status="pending")
    assert total == 3 and {r.name for r in rows} == {"summarize-1", "summarize-2", "summarize-3"}
    rows, total = list_adapters(session, namespaces=None, search="CHAT-")
    assert total == 6 and all(r.namespace == "acme" for r in rows)
    rows, total = list_adapters(session, namespaces=None, base_model="other")
    assert (rows, total) == ([], 0)
    # LIKE wildcards in a search are literal characters.
    assert list_adapters(session, namespaces=None, search="%")[1] == 0
    assert list_adapters(session, namespaces=None, search="chat_1")[1] == 0


def test_pages_cover_everything_once_in_order(session, catalog) -> None:
    seen = []
    for page in (1, 2, 3, 4):
        rows, total = list_adapters(session, namespaces=None, sort="name", page=page, page_size=3)
        assert total == 10
        seen.extend(r.name for r in rows)
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 10
    desc, _ = list_adapters(session, namespaces=None, sort="-name", page_size=50)
    assert [r.name for r in desc] == sorted(seen, reverse=True)
    newest, _ = list_adapters(session, namespaces=None, sort="-created_at", page_size=50)
    oldest, _ = list_adapters(session, namespaces=None, sort="created_at", page_size=50)
    assert [r.id for r in newest] == [r.id for r in reversed(oldest)]
    assert newest[0].name == "summarize-3"


def test_visible_namespaces_restrict_the_listing(session, catalog) -> None:
    rows, total = list_adapters(session, namespaces={"bank"})
    assert total == 4 and {r.namespace for r in rows} == {"bank"}
    rows, total = list_adapters(session, namespaces={"bank"}, namespace="acme")
    assert (rows, total) == ([], 0)
    assert list_adapters(session, namespaces=set()) == ([], 0)


@pytest.mark.parametrize(
    "kwargs",
    [{"sort": "size"}, {"page": 0}, {"page_size": 0}, {"page_size": 501}, {"status": "live"}],
)
def test_bad_listing_arguments_are_400(session, kwargs) -> None:
    with pytest.raises(BadRequest):
        list_adapters(session, namespaces=None, **kwargs)


def test_fleet_state_lists_ready_adapters_with_canonical_files(session, catalog) -> None:
    state = fleet_state(session, "tiny-llama")
    assert state["generation"] == 6
    assert sorted(a["name"] for a in state["adapters"]) == [f"chat-{i}" for i in range(6)]
    first = state["adapters"][0]
    assert first["files"] == [
        {"path": "adapter_model.safetensors", "sha256": first["manifest_sha256"], "size": 100}
    ]
    registry.approve(session, catalog["bank"][1].id, actor="t")
    registry.archive(session, catalog["acme"][0].id, actor="t")
    state = fleet_state(session, "tiny-llama")
    assert state["generation"] == 8
    names = {a["name"] for a in state["adapters"]}
    assert "summarize-1" in names and "chat-0" not in names
    assert fleet_state(session, "other") == {"generation": 8, "adapters": [], "aliases": []}


def test_versions_of_an_adapter_in_semver_order(session, auto_ns, base_model, make_package) -> None:
    for seed, version in enumerate(["1.10.0", "1.2.0", "1.2.0-rc1", "0.9.1"], start=1):
        registry.commit_version(
            session,
            make_package(seed),
            namespace=auto_ns,
            name="bot",
            version=version,
            base_model=base_model,
            provenance=Provenance(),
            actor="t",
        )
    versions = [v.version for v in list_versions(session, auto_ns, "bot")]
    assert versions == ["0.9.1", "1.2.0-rc1", "1.2.0", "1.10.0"]
    assert get_version(session, auto_ns, "bot", "1.2.0").version == "1.2.0"


def test_a_non_ascii_search_finds_nothing_and_fails_nothing(session, catalog) -> None:
    # Names are lowercase ASCII; a non-ASCII search keeps ILIKE (catalog.list_adapters) and
    # is an empty page on both backends, not an error.
    assert list_adapters(session, namespaces=None, search="ÇHAT") == ([], 0)
    assert list_adapters(session, namespaces=None, search="chat-İ")[1] == 0
