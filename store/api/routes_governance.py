"""Governance routes: a version's status history, restoring an archived version, and the
access log. The rules are in ``store.governance``; these check the caller's role and scope."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from store import governance, history
from store.api.deps import Caller, State, audited
from store.api.errors import error_responses
from store.api.routes_adapters import adapter_entity, visible_adapter
from store.api.schemas.adapters import AdapterOut
from store.api.schemas.common import QueryInstant, page_of
from store.api.schemas.governance import (
    AuditList,
    HistoryOut,
    RestoreBody,
    audit_out,
    history_out,
)
from store.db import session_scope

router = APIRouter(prefix="/v1", responses=error_responses(401))


@router.get(
    "/adapters/{adapter_id}/history", response_model=HistoryOut, responses=error_responses(404)
)
def get_history(adapter_id: str, caller: Caller, state: State) -> dict[str, Any]:
    """Every status change of a version (reader of its namespace): from, to, actor, reason,
    generation, time; and who uploaded it."""
    with session_scope(state.engine) as session:
        version = visible_adapter(session, caller, adapter_id)
        return history_out(version, history.list_history(session, adapter_id))


@router.post(
    "/adapters/{adapter_id}/restore",
    response_model=AdapterOut,
    responses=error_responses(400, 403, 404, 409, 422),
)
def restore_adapter(
    adapter_id: str, body: RestoreBody, request: Request, caller: Caller, state: State
) -> dict[str, Any]:
    """Serve an archived version again (admin of its namespace): ``archived -> ready``
    through the status machine, a new fleet generation and a load refresh; the reason is
    recorded in its history. 409 ``illegal_transition`` unless it is archived."""
    with audited(request, caller, "adapter.restore", target=adapter_id) as where:
        with session_scope(state.engine) as session:
            version = visible_adapter(session, caller, adapter_id)
            where["namespace"] = version.namespace
            caller.require_role(version.namespace, "admin", f"adapter {adapter_id} not found")
            version = governance.restore(
                session, adapter_id, actor=caller.actor, reason=body.reason
            )
            return adapter_entity(session, version)


@router.get("/audit", response_model=AuditList, responses=error_responses(400, 404))
def list_audit(
    caller: Caller,
    state: State,
    namespace: Annotated[str | None, Query(max_length=63)] = None,
    adapter: Annotated[str | None, Query(max_length=512, description="target id")] = None,
    actor: Annotated[str | None, Query(max_length=256)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    from_: Annotated[QueryInstant | None, Query(alias="from")] = None,
    to: QueryInstant | None = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=governance.MAX_AUDIT_PAGE)] = 50,
) -> dict[str, Any]:
    """The access log, newest first (any role): a namespace token sees its namespace's
    rows only, and asking for another namespace answers the missing one's 404."""
    if namespace is not None:
        caller.require_read(namespace, f"namespace {namespace!r} not found")
    with session_scope(state.engine) as session:
        rows, total = governance.list_audit(
            session,
            namespaces=caller.visible_namespaces(),
            namespace=namespace,
            adapter=adapter,
            actor=actor,
            action=action,
            since=from_,
            until=to,
            page=page,
            page_size=page_size,
        )
        data = [audit_out(r) for r in rows]
    return page_of(data, page=page, page_size=page_size, total=total)


__all__ = ["router"]
