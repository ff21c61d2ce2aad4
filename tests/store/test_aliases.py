"""Aliases and pins in the registry service (``store.aliases``), on SQLite and PostgreSQL:
revisions and history, the generation and ``fleet.refresh`` ``alias`` rows of every change,
the 409 ``alias_target`` when a target leaves ready (and the drop that rewrites the alias),
pins, and the fleet view with each adapter's implicit ``latest`` in SemVer order."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from events.models import alias_problem, version_key
from events.streams import REFRESH_STREAM
from store import aliases, fleet_routing, registry
from store.aliases import Target, renormalised
from store.catalog import fleet_state, get_version, list_versions
from store.errors import AliasTargetConflict, BadRequest, NotFound
from store.models import Alias, AliasRevision, OutboxRow, Provenance
from store.outbox import current_generation
from store.tenancy import register_base_model

OTHER_BASE = "tiny-llama-b"


def ready(session: Session, make_package, version: str, *, seed: int, name: str = "bot", ns="acme"):
    """A ready version of ``ns/name`` (auto namespace), committed."""
    row, _ = registry.commit_version(
        session,
        make_package(seed),
        namespace=ns,
        name=name,
        version=version,
        base_model=session.info.get("base", "tiny-llama"),
        provenance=Provenance(),
        actor="trainer",
    )
    session.commit()
    assert row.status == "ready"
    return row


def refreshes(session: Session) -> list[dict]:
    rows = session.execute(
        sa.select(OutboxRow).where(OutboxRow.stream == REFRESH_STREAM).order_by(OutboxRow.id)
    ).scalars()
    return [json.loads(r.payload) for r in rows]


def put(session: Session, alias: str, *targets: tuple[str, int], pinned: bool = False) -> Alias:
    row = aliases.set_alias(
        session,
        "acme",
        "bot",
        alias,
        [Target(v, w) for v, w in targets],
        actor="release",
        pinned=pinned,
    )
    session.commit()
    return row


@pytest.fixture
def two_versions(session, auto_ns, base_model, make_package):
    return ready(session, make_package, "1.2.0", seed=1), ready(
        session, make_package, "1.3.0", seed=2
    )


def test_set_alias_records_a_revision_a_generation_and_an_alias_refresh(session, two_versions):
    v12, v13 = two_versions
    before = current_generation(session)
    row = put(session, "stable", ("1.2.0", 100))
    assert (row.revision, row.generation) == (1, before + 1)
    assert row.targets == [{"version": "1.2.0", "adapter_id": v12.id, "weight": 100}]
    event = refreshes(session)[-1]
    assert event["action"] == "alias"
    assert event["adapter"] == "acme/bot@stable"
    assert event["adapter_id"] == row.id
    assert event["manifest_sha256"] is None
    assert event["generation"] == before + 1 == current_generation(session)

    row = put(session, "stable", ("1.2.0", 90), ("1.3.0", 10))
    assert (row.revision, row.generation) == (2, before + 2)
    history = aliases.alias_history(session, "acme", "bot", "stable")
    assert [(h.revision, h.action, h.generation) for h in history] == [
        (1, "set", before + 1),
        (2, "set", before + 2),
    ]
    assert history[1].targets == [
        {"version": "1.2.0", "adapter_id": v12.id, "weight": 90},
        {"version": "1.3.0", "adapter_id": v13.id, "weight": 10},
    ]


def test_the_same_targets_again_change_nothing(session, two_versions):
    put(session, "stable", ("1.2.0", 50), ("1.3.0", 50))
    generation, events = current_generation(session), len(refreshes(session))
    row = put(session, "stable", ("1.2.0", 50), ("1.3.0", 50))
    assert row.revision == 1
    assert current_generation(session) == generation
    assert len(refreshes(session)) == events
    assert put(session, "stable", ("1.2.0", 50), ("1.3.0", 50), pinned=True).revision == 2


@pytest.mark.parametrize(
    ("targets", "needle"),
    [
        ([], "1 to 8 targets"),
        ([("1.2.0", 50), ("1.2.0", 50)], "listed twice"),
        ([("1.2.0", 60), ("1.3.0", 30)], "sum to 100, got 90"),
        ([("1.2.0", 100), ("1.3.0", 10)], "sum to 100, got 110"),
        ([("1.2.0", 0), ("1.3.0", 100)], "integer 1..100"),
        ([("9.9.9", 100)], "acme/bot@9.9.9 does not exist"),
        ([("stable", 100)], "not a semantic version"),
        ([(f"1.{i}.0", 10) for i in range(9)], "1 to 8 targets, got 9"),
    ],
)
def test_bad_targets_are_invalid_alias_target(session, two_versions, targets, needle):
    with pytest.raises(BadRequest) as info:
        put(session, "stable", *targets)
    assert info.value.code == "invalid_alias_target"
    assert needle in info.value.message
    session.rollback()
    assert session.execute(sa.select(Alias)).first() is None


def test_a_non_ready_or_other_base_model_target_is_refused(
    session, auto_ns, base_model, make_package
):
    ready(session, make_package, "1.2.0", seed=1)
    registry.archive(session, get_version(session, "acme", "bot", "1.2.0").id, actor="t")
    session.commit()
    with pytest.raises(BadRequest, match="acme/bot@1.2.0 is archived: an alias routes to ready"):
        put(session, "stable", ("1.2.0", 100))
    session.rollback()

    from support.tiny import tiny_hf_config

    register_base_model(session, OTHER_BASE, tiny_hf_config(), actor="admin")
    session.commit()
    ready(session, make_package, "1.4.0", seed=3)
    session.info["base"] = OTHER_BASE
    ready(session, make_package, "1.5.0", seed=4)
    with pytest.raises(BadRequest, match="different base models"):
        put(session, "stable", ("1.4.0", 50), ("1.5.0", 50))


@pytest.mark.parametrize(
    ("alias", "needle"),
    [
        ("1.2.0", "reads as a version"),
        ("v1.2.0", "reads as a version"),
        ("1.2.0-rc.1", "reads as a version"),
        ("latest", "reserved"),
        ("Stable", "invalid alias"),
        ("1abc", "invalid alias"),
        ("st.able", "invalid alias"),
        ("", "invalid alias"),
        ("a" * 64, "invalid alias"),
        ("stäble", "invalid alias"),
    ],
)
def test_bad_alias_names_are_invalid_alias(session, two_versions, alias, needle):
    with pytest.raises(BadRequest) as info:
        put(session, alias, ("1.2.0", 100))
    assert info.value.code == "invalid_alias"
    assert needle in info.value.message


def test_good_alias_names_pass() -> None:
    for name in ("stable", "canary", "prod", "v2", "eu-west_1", "a" * 63):
        assert alias_problem(name) is None


def test_an_adapter_with_no_version_is_not_found(session, auto_ns):
    with pytest.raises(NotFound, match="adapter acme/bot not found"):
        put(session, "stable", ("1.0.0", 100))


def test_delete_keeps_the_history_and_announces(session, two_versions):
    row = put(session, "canary", ("1.3.0", 100))
    aliases.delete_alias(session, "acme", "bot", "canary", actor="release", reason="done")
    session.commit()
    assert session.get(Alias, row.id) is None
    history = aliases.alias_history(session, "acme", "bot", "canary")
    assert [(h.revision, h.action, h.targets) for h in history][-1] == (2, "delete", None)
    event = refreshes(session)[-1]
    assert (event["action"], event["adapter"]) == ("alias", "acme/bot@canary")
    assert event["generation"] == current_generation(session) == history[-1].generation
    with pytest.raises(NotFound):
        aliases.get_alias(session, "acme", "bot", "canary")
    with pytest.raises(NotFound):
        aliases.delete_alias(session, "acme", "bot", "canary", actor="release", reason=None)


def test_archiving_a_target_is_alias_target_naming_the_aliases(session, two_versions):
    v12, _ = two_versions
    put(session, "stable", ("1.2.0", 100))
    put(session, "canary", ("1.2.0", 50), ("1.3.0", 50))
    generation = current_generation(session)
    for leave in (
        lambda: registry.archive(session, v12.id, actor="t"),
        lambda: registry.transition(session, v12.id, "archived", actor="t"),
        lambda: registry.purge(session, v12.id, actor="t"),
    ):
        with pytest.raises(AliasTargetConflict) as info:
            leave()
        session.rollback()
        assert info.value.code == "alias_target"
        assert info.value.http_status == 409
        assert "acme/bot@canary, acme/bot@stable" in info.value.message
    assert get_version(session, "acme", "bot", "1.2.0").status == "ready"
    assert current_generation(session) == generation


def test_drop_from_aliases_rewrites_them_in_the_same_transaction(session, two_versions):
    v12, v13 = two_versions
    put(session, "stable", ("1.2.0", 100))
    put(session, "canary", ("1.2.0", 70), ("1.3.0", 30))
    registry.archive(session, v12.id, actor="t", drop_from_aliases=True)
    session.commit()
    assert get_version(session, "acme", "bot", "1.2.0").status == "archived"
    with pytest.raises(NotFound):
        aliases.get_alias(session, "acme", "bot", "stable")  # its only target: deleted
    canary = aliases.get_alias(session, "acme", "bot", "canary")
    assert canary.targets == [{"version": "1.3.0", "adapter_id": v13.id, "weight": 100}]
    assert canary.revision == 2
    assert aliases.alias_history(session, "acme", "bot", "canary")[-1].action == "drop"
    actions = [(e["action"], e["adapter"]) for e in refreshes(session)[-3:]]
    assert sorted(actions[:2]) == [("alias", "acme/bot@canary"), ("alias", "acme/bot@stable")]
    assert actions[2] == ("evict", "acme/bot@1.2.0")  # the alias moves before the eviction


def test_purge_with_drop(session, two_versions):
    v12, _ = two_versions
    put(session, "stable", ("1.2.0", 100))
    registry.purge(session, v12.id, actor="t", drop_from_aliases=True)
    session.commit()
    assert aliases.list_aliases(session, "acme", "bot")[0].alias == "latest"


@pytest.mark.parametrize(
    ("weights", "expected"),
    [([70], [100]), ([30, 30], [50, 50]), ([10, 10, 10], [34, 33, 33]), ([1, 98], [1, 99])],
)
def test_renormalised_sums_to_100(weights, expected):
    assert renormalised(weights) == expected


def test_implicit_latest_is_the_highest_ready_semver(session, auto_ns, base_model, make_package):
    for seed, version in enumerate(["1.9.0", "1.10.0", "2.0.0-rc.2", "2.0.0-rc.10", "0.9.0"]):
        ready(session, make_package, version, seed=seed + 1)
    latest = aliases.get_alias(session, "acme", "bot", "latest")
    assert latest.revision == 0
    assert latest.targets[0]["version"] == "2.0.0-rc.10"  # rc.10 > rc.2 > 1.10.0 > 1.9.0
    ready(session, make_package, "2.0.0", seed=9)
    assert aliases.get_alias(session, "acme", "bot", "latest").targets[0]["version"] == "2.0.0"
    view = fleet_state(session, base_model)
    entry = [a for a in view["aliases"] if a["alias"] == "latest"]
    assert entry == [
        {
            "namespace": "acme",
            "name": "bot",
            "alias": "latest",
            "coordinates": "acme/bot@latest",
            "base_model": base_model,
            "revision": 0,
            "generation": get_version(session, "acme", "bot", "2.0.0").generation,
            "implicit": True,
            "pinned": False,
            "targets": [
                {
                    "version": "2.0.0",
                    "adapter_id": get_version(session, "acme", "bot", "2.0.0").id,
                    "weight": 100,
                }
            ],
        }
    ]


def test_version_key_is_semver_precedence():
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.9.0",
        "1.10.0",
        "10.0.0",
    ]
    assert sorted(reversed(ordered), key=version_key) == ordered


def test_list_versions_orders_numeric_pre_releases_numerically(
    session, auto_ns, base_model, make_package
):
    # Before version_key, pre-releases compared as strings: rc.10 sorted before rc.2.
    for seed, version in enumerate(["1.0.0-rc.10", "1.0.0-rc.2", "1.0.0"]):
        ready(session, make_package, version, seed=seed + 1)
    assert [v.version for v in list_versions(session, "acme", "bot")] == [
        "1.0.0-rc.2",
        "1.0.0-rc.10",
        "1.0.0",
    ]


def test_fleet_view_lists_aliases_whose_targets_are_all_in_adapters(session, two_versions):
    v12, v13 = two_versions
    put(session, "canary", ("1.2.0", 90), ("1.3.0", 10), pinned=True)
    view = fleet_state(session, "tiny-llama")
    ids = {a["id"] for a in view["adapters"]}
    assert [a["alias"] for a in view["aliases"]] == ["canary", "latest"]
    for alias in view["aliases"]:
        assert {t["adapter_id"] for t in alias["targets"]} <= ids
    canary = view["aliases"][0]
    assert (canary["implicit"], canary["pinned"], canary["revision"]) == (False, True, 1)
    assert [t["weight"] for t in canary["targets"]] == [90, 10]
    assert all(a["pinned"] for a in view["adapters"])  # targets of a pinned alias
    assert fleet_state(session, "another-base")["aliases"] == []


def test_pinning_a_ready_version_bumps_the_generation_and_announces_a_load(session, two_versions):
    v12, v13 = two_versions
    generation = current_generation(session)
    fleet_routing.set_pinned(session, v12.id, True, actor="ops")
    session.commit()
    assert current_generation(session) == generation + 1
    event = refreshes(session)[-1]
    assert (event["action"], event["adapter"], event["generation"]) == (
        "load",
        "acme/bot@1.2.0",
        generation + 1,
    )
    pinned = {a["version"]: a["pinned"] for a in fleet_state(session, "tiny-llama")["adapters"]}
    assert pinned == {"1.2.0": True, "1.3.0": False}
    fleet_routing.set_pinned(session, v12.id, True, actor="ops")  # no change: no event
    session.commit()
    assert current_generation(session) == generation + 1
    fleet_routing.set_pinned(session, v12.id, False, actor="ops")
    session.commit()
    assert current_generation(session) == generation + 2
    assert not any(a["pinned"] for a in fleet_state(session, "tiny-llama")["adapters"])


def test_history_of_an_alias_that_never_existed_is_not_found(session, two_versions):
    with pytest.raises(NotFound):
        aliases.alias_history(session, "acme", "bot", "stable")
    assert session.execute(sa.select(AliasRevision)).first() is None
