"""Metadata edits (``store.metadata.update_adapter_metadata``) and the catalog/registry split."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from store import catalog, registry
from store.catalog import get_adapter
from store.errors import BadRequest, NotFound
from store.metadata import update_adapter_metadata
from store.models import AdapterVersion, OutboxRow, Provenance
from store.outbox import current_generation


def _ready(session: Session, ns: str, make_package, seed: int = 1) -> AdapterVersion:
    version, _ = registry.commit_version(
        session,
        make_package(seed),
        namespace=ns,
        name="bot",
        version="1.0.0",
        base_model="tiny-llama",
        provenance=Provenance(job_id="job-7", custom_fields={"team": "a"}),
        actor="trainer",
        description="first",
    )
    session.commit()
    return version


def _snapshot(session: Session, adapter_id: str) -> dict:
    session.expire_all()
    return get_adapter(session, adapter_id).model_dump()


def test_edit_description_and_custom_fields_records_who_and_when(
    session, auto_ns, base_model, make_package
) -> None:
    version = _ready(session, auto_ns, make_package)
    before = _snapshot(session, version.id)
    outbox_before = session.execute(sa.select(sa.func.count()).select_from(OutboxRow)).scalar()

    update_adapter_metadata(
        session, version.id, actor="editor", description="better", custom_fields={"team": "b"}
    )
    after = _snapshot(session, version.id)
    assert after["description"] == "better" and after["custom_fields"] == {"team": "b"}
    assert after["updated_by"] == "editor"
    assert after["updated_at"] > before["updated_at"]
    assert after["updated_at"] - before["updated_at"] < timedelta(minutes=1)
    # Content, provenance, status and serving state are untouched: nothing to announce.
    untouched = set(before) - {"description", "custom_fields", "updated_at", "updated_by"}
    assert {k: after[k] for k in untouched} == {k: before[k] for k in untouched}
    assert current_generation(session) == 1
    assert session.execute(sa.select(sa.func.count()).select_from(OutboxRow)).scalar() == (
        outbox_before
    )


def test_only_the_given_field_changes_and_none_clears(
    session, auto_ns, base_model, make_package
) -> None:
    version = _ready(session, auto_ns, make_package)
    update_adapter_metadata(session, version.id, actor="e", custom_fields={"x": [1, 2]})
    row = _snapshot(session, version.id)
    assert row["description"] == "first" and row["custom_fields"] == {"x": [1, 2]}
    update_adapter_metadata(session, version.id, actor="e", description=None)
    row = _snapshot(session, version.id)
    assert row["description"] is None and row["custom_fields"] == {"x": [1, 2]}
    update_adapter_metadata(session, version.id, actor="e", custom_fields=None)
    assert _snapshot(session, version.id)["custom_fields"] is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"description": 5},
        {"custom_fields": ["not", "an", "object"]},
        {"custom_fields": {"nan": float("nan")}},
        {"custom_fields": {"obj": object()}},
    ],
    ids=["nothing", "description-int", "fields-list", "fields-nan", "fields-object"],
)
def test_bad_metadata_is_400_and_changes_nothing(
    session, auto_ns, base_model, make_package, kwargs
) -> None:
    version = _ready(session, auto_ns, make_package)
    before = _snapshot(session, version.id)
    with pytest.raises(BadRequest):
        update_adapter_metadata(session, version.id, actor="e", **kwargs)
    session.rollback()
    assert _snapshot(session, version.id) == before


def test_edit_of_unknown_adapter_is_not_found(session) -> None:
    with pytest.raises(NotFound):
        update_adapter_metadata(session, "ad_" + "0" * 32, actor="e", description="x")


def test_edit_works_on_archived_versions_too(session, auto_ns, base_model, make_package) -> None:
    version = _ready(session, auto_ns, make_package)
    registry.archive(session, version.id, actor="ops")
    update_adapter_metadata(session, version.id, actor="e", description="retired")
    row = _snapshot(session, version.id)
    assert row["status"] == "archived" and row["description"] == "retired"
    assert json.loads(json.dumps(row["custom_fields"])) == {"team": "a"}


def test_the_catalog_is_reads_only_and_the_registry_re_exports_none_of_it() -> None:
    public = {n for n in vars(catalog) if not n.startswith("_") and callable(getattr(catalog, n))}
    read_side = {
        "get_adapter",
        "get_version",
        "list_versions",
        "list_files",
        "list_adapters",
        "get_namespace",
        "list_namespaces",
        "list_base_models",
        "get_base_model_spec",
        "fleet_state",
    }
    assert read_side <= public
    writes = {"pending_outbox", "mark_sent", "record_access", "run_blob_gc", "commit_or_flush"}
    assert not writes & set(vars(catalog))
    for name in read_side | {"SORTS", "MAX_PAGE_SIZE"}:
        assert not hasattr(registry, name), name
        assert name not in registry.__all__
