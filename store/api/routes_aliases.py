"""Aliases of an adapter (``namespace/name@alias``): set, read, list, history, delete. The
rules are in ``store.aliases``; these check the caller's role and scope (another tenant's
adapter or alias answers the same 404 as a missing one) and write the access log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi import Path as PathParam

from events.models import ALIAS_PATTERN, ALIAS_RULE
from store import aliases
from store.aliases import Target
from store.api.deps import AppState, Caller, State, audited
from store.api.errors import error_responses
from store.api.schemas.aliases import (
    AliasDeleted,
    AliasHistory,
    AliasList,
    AliasOut,
    AliasPut,
    alias_entity,
    history_entity,
)
from store.auth import Principal
from store.db import session_scope
from store.errors import NotFound

router = APIRouter(prefix="/v1/adapters", responses=error_responses(401))
# In the schema only: ``store.aliases`` refuses a bad name with a message naming the rule.
AliasName = Annotated[
    str,
    PathParam(
        description=f"{ALIAS_RULE}; `latest` is the implicit highest ready version",
        json_schema_extra={"pattern": ALIAS_PATTERN, "maxLength": 63},
    ),
]
PATH = "/{namespace}/{name}/aliases"


def _missing(namespace: str, name: str, alias: str | None = None) -> str:
    if alias is None:
        return f"adapter {namespace}/{name} not found"
    return f"alias {namespace}/{name}@{alias[:80]} not found"


@router.get(PATH, response_model=AliasList, responses=error_responses(404))
def list_aliases(namespace: str, name: str, caller: Caller, state: State) -> dict[str, Any]:
    """Every alias of ``namespace/name`` (reader), by name, then the implicit ``latest``."""
    caller.require_read(namespace, _missing(namespace, name))
    with session_scope(state.engine) as session:
        rows = aliases.list_aliases(session, namespace, name)
        return {"object": "list", "data": [alias_entity(r) for r in rows]}


@router.get(PATH + "/{alias}", response_model=AliasOut, responses=error_responses(404))
def get_alias(
    namespace: str, name: str, alias: AliasName, caller: Caller, state: State
) -> dict[str, Any]:
    """One alias (reader); ``latest`` is the highest ready version."""
    caller.require_read(namespace, _missing(namespace, name, alias))
    with session_scope(state.engine) as session:
        return alias_entity(aliases.get_alias(session, namespace, name, alias))


@router.get(PATH + "/{alias}/history", response_model=AliasHistory, responses=error_responses(404))
def get_alias_history(
    namespace: str, name: str, alias: AliasName, caller: Caller, state: State
) -> dict[str, Any]:
    """Every revision of the alias (reader), oldest first, also once it is deleted."""
    caller.require_read(namespace, _missing(namespace, name, alias))
    with session_scope(state.engine) as session:
        rows = aliases.alias_history(session, namespace, name, alias)
        return history_entity(f"{namespace}/{name}@{alias}", rows)


@router.put(
    PATH + "/{alias}", response_model=AliasOut, responses=error_responses(400, 403, 404, 409, 422)
)
def put_alias(
    namespace: str,
    name: str,
    alias: AliasName,
    body: AliasPut,
    request: Request,
    caller: Caller,
    state: State,
) -> dict[str, Any]:
    """Create or move the alias (writer of the namespace). Each change is a new revision,
    a new fleet generation and a ``fleet.refresh`` ``alias`` event; the same body again
    changes nothing. 400 ``invalid_alias`` (a bad or reserved name, one that reads as a
    version) or ``invalid_alias_target`` (unknown, repeated or non-ready versions, weights
    not summing to 100, two base models)."""
    coordinates = f"{namespace}/{name}@{alias}"
    with audited(request, caller, "alias.set", target=coordinates) as where:
        caller.require_role(namespace, "writer", _missing(namespace, name))
        where["namespace"] = namespace
        with session_scope(state.engine) as session:
            row = aliases.set_alias(
                session,
                namespace,
                name,
                alias,
                [Target(t.version, t.weight) for t in body.targets],
                actor=caller.actor,
                pinned=body.pinned,
                reason=body.reason,
            )
            return alias_entity(row)


@router.delete(
    PATH + "/{alias}", response_model=AliasDeleted, responses=error_responses(400, 403, 404)
)
def delete_alias(
    namespace: str, name: str, alias: AliasName, request: Request, caller: Caller, state: State
) -> dict[str, Any]:
    """Delete the alias (writer); its history stays readable. A new fleet generation and a
    ``fleet.refresh`` ``alias`` event; engines stop resolving it."""
    coordinates = f"{namespace}/{name}@{alias}"
    with audited(request, caller, "alias.delete", target=coordinates) as where:
        caller.require_role(namespace, "writer", _missing(namespace, name, alias))
        where["namespace"] = namespace
        with session_scope(state.engine) as session:
            aliases.delete_alias(session, namespace, name, alias, actor=caller.actor, reason=None)
            return {"object": "alias", "coordinates": coordinates, "deleted": True}


def aliases_of_files(namespace: str, path: str, caller: Principal, state: AppState) -> Any:
    """The GET answers for an adapter *named* ``files``, whose alias paths
    (``/{namespace}/files/aliases[/...]``) ``routes_transfer``'s download route matches
    first and hands here."""
    parts = path.split("/")
    if len(parts) == 1:
        return list_aliases(namespace, "files", caller, state)
    if len(parts) == 2:
        return get_alias(namespace, "files", parts[1], caller, state)
    if len(parts) == 3 and parts[2] == "history":
        return get_alias_history(namespace, "files", parts[1], caller, state)
    raise NotFound(_missing(namespace, "files", parts[1]))
