"""Adapter versions: list, read, approve/reject/archive, edit, delete. Uploads, the upload
check and file downloads are ``routes_transfer``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from sqlmodel import Session

from events.models import VERSION_MAX_LENGTH, VERSION_PATTERN, VERSION_RULE, is_version
from store import catalog, fleet_routing, metadata, registry
from store.api.deps import Caller, State, audited
from store.api.errors import error_responses
from store.api.schemas.adapters import (
    AdapterDeleted,
    AdapterList,
    AdapterOut,
    AdapterPatch,
    adapter_out,
)
from store.api.schemas.common import json_answer, page_of
from store.approval import Status
from store.auth import Principal
from store.db import session_scope
from store.errors import BadRequest, NotFound
from store.models import AdapterVersion

router = APIRouter(prefix="/v1/adapters", responses=error_responses(401))
Sort = Literal["created_at", "-created_at", "name", "-name"]
# In the schema only: ``parse_coordinates`` refuses with a message naming the rule.
VERSION_SCHEMA = {"pattern": VERSION_PATTERN, "maxLength": VERSION_MAX_LENGTH}
Version = Annotated[str, PathParam(description=VERSION_RULE, json_schema_extra=VERSION_SCHEMA)]


def visible_adapter(session: Session, caller: Principal, adapter_id: str) -> AdapterVersion:
    """The adapter if it exists and the caller may see it; one identical ``NotFound``
    otherwise, so another tenant cannot probe for ids."""
    missing = f"adapter {adapter_id} not found"
    try:
        version = catalog.get_adapter(session, adapter_id)
    except NotFound:
        raise NotFound(missing) from None
    caller.require_read(version.namespace, missing)
    return version


def adapter_entity(session: Session, version: AdapterVersion) -> dict[str, Any]:
    """A version as the API answers it, with its files."""
    return adapter_out(version, catalog.list_files(session, version.id))


@router.get("", response_model=AdapterList, responses=error_responses(400))
def list_adapters(
    caller: Caller,
    state: State,
    namespace: str | None = None,
    base_model: str | None = None,
    status: Status | None = None,
    search: Annotated[str | None, Query(max_length=128)] = None,
    sort: Sort = "-created_at",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=catalog.MAX_PAGE_SIZE)] = 50,
) -> Response:
    """One page of the adapter versions the caller can see, filtered and sorted."""
    with session_scope(state.engine) as session:
        rows, total = catalog.list_adapters(
            session,
            namespaces=caller.visible_namespaces(),
            namespace=namespace,
            base_model=base_model,
            status=status,
            search=search,
            sort=sort,
            page=page,
            page_size=page_size,
            columns=catalog.LIST_COLUMNS,
        )
    data = [adapter_out(v) for v in rows]
    return json_answer(page_of(data, page=page, page_size=page_size, total=total))


@router.get("/{adapter_id}", response_model=AdapterOut, responses=error_responses(404))
def get_adapter(adapter_id: str, caller: Caller, state: State) -> dict[str, Any]:
    """One version with its files (both roles) and provenance."""
    with session_scope(state.engine) as session:
        return adapter_entity(session, visible_adapter(session, caller, adapter_id))


@router.get("/{namespace}/{name}", response_model=AdapterList, responses=error_responses(404))
def list_versions(namespace: str, name: str, caller: Caller, state: State) -> dict[str, Any]:
    """Every version of ``namespace/name``, oldest semantic version first."""
    missing = f"adapter {namespace}/{name} not found"
    caller.require_read(namespace, missing)
    with session_scope(state.engine) as session:
        rows = catalog.list_versions(session, namespace, name)
        if not rows:
            raise NotFound(missing)
        data = [adapter_out(v) for v in rows]
    return page_of(data, page=1, page_size=len(data), total=len(data))


@router.get(
    "/{namespace}/{name}/{version}",
    response_model=AdapterOut,
    description="One version by its coordinates (``namespace/name@version``), with its files "
    "(both roles) and provenance; 404 when it does not exist or the caller may not see it, "
    "400 for a malformed version.",
    responses=error_responses(400, 404),
)
def get_version(
    namespace: str, name: str, version: Version, caller: Caller, state: State
) -> dict[str, Any]:
    if not is_version(version):  # also for the ``/{namespace}/files/{version}`` route's call
        raise BadRequest(f"invalid version {version[:80]!r}: {VERSION_RULE}")
    caller.require_read(namespace, f"adapter {namespace}/{name}@{version} not found")
    with session_scope(state.engine) as session:
        return adapter_entity(session, catalog.get_version(session, namespace, name, version))


@router.patch(
    "/{adapter_id}", response_model=AdapterOut, responses=error_responses(400, 403, 404, 409, 422)
)
def patch_adapter(
    adapter_id: str, body: AdapterPatch, request: Request, caller: Caller, state: State
) -> dict[str, Any]:
    """Approve/reject/archive (writer of the namespace), edit description and custom
    fields and/or pin, in one transaction. 400 for an empty body, a null ``status`` or
    ``pinned``, a ``reason`` without a ``status``; illegal transitions answer 409
    ``illegal_transition``; archiving a version an alias routes to answers 409
    ``alias_target`` naming the aliases, unless ``drop_from_aliases``."""
    changes = body.model_dump(exclude_unset=True)
    edits = {k: changes[k] for k in ("description", "custom_fields") if k in changes}
    if "status" in changes and body.status is None:
        raise BadRequest("status cannot be null: give ready, rejected or archived")
    if "pinned" in changes and body.pinned is None:
        raise BadRequest("pinned cannot be null: give true or false")
    if body.reason is not None and body.status is None:
        raise BadRequest("reason goes with a status change: give status too")
    if body.drop_from_aliases and body.status is None:
        raise BadRequest("drop_from_aliases goes with a status change: give status too")
    if not edits and body.status is None and body.pinned is None:
        raise BadRequest("nothing to change: give status, description, custom_fields or pinned")
    action = f"adapter.{body.status}" if body.status else "adapter.edit"
    if body.pinned is not None and not edits and body.status is None:
        action = "adapter.pin" if body.pinned else "adapter.unpin"
    with audited(request, caller, action, target=adapter_id) as where:
        with session_scope(state.engine) as session:
            version = visible_adapter(session, caller, adapter_id)
            where["namespace"] = version.namespace
            caller.require_role(version.namespace, "writer", f"adapter {adapter_id} not found")
            if edits:
                version = metadata.update_adapter_metadata(
                    session, adapter_id, actor=caller.actor, **edits
                )
            if body.pinned is not None:
                version = fleet_routing.set_pinned(
                    session, adapter_id, body.pinned, actor=caller.actor
                )
            if body.status is not None:
                version = registry.transition(
                    session,
                    adapter_id,
                    body.status,
                    actor=caller.actor,
                    reason=body.reason,
                    drop_from_aliases=body.drop_from_aliases,
                )
            return adapter_entity(session, version)


@router.delete(
    "/{adapter_id}",
    response_model=AdapterOut | AdapterDeleted,
    responses=error_responses(400, 403, 404, 409),
)
def delete_adapter(
    adapter_id: str,
    request: Request,
    caller: Caller,
    state: State,
    purge: bool = False,
    drop_from_aliases: bool = False,
) -> dict[str, Any]:
    """Archive a version (writer), or with ``purge=true`` (admin) delete its row; its
    blobs are left to the garbage collector. A ready version an alias routes to answers 409
    ``alias_target`` unless ``drop_from_aliases=true`` removes it from those aliases."""
    action = "adapter.purge" if purge else "adapter.archive"
    with audited(request, caller, action, target=adapter_id) as where:
        with session_scope(state.engine) as session:
            version = visible_adapter(session, caller, adapter_id)
            where["namespace"] = version.namespace
            missing = f"adapter {adapter_id} not found"
            if purge:
                caller.require_role(version.namespace, "admin", missing)
                registry.purge(
                    session, adapter_id, actor=caller.actor, drop_from_aliases=drop_from_aliases
                )
                return {"object": "adapter", "id": adapter_id, "deleted": True}
            caller.require_role(version.namespace, "writer", missing)
            version = registry.archive(
                session, adapter_id, actor=caller.actor, drop_from_aliases=drop_from_aliases
            )
            return adapter_entity(session, version)
