"""Namespaces and base models: the things adapters live in and refer to (tokens:
``routes_tokens``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from sqlmodel import Session

from events.models import NAMESPACE_PATTERN
from store import catalog, tenancy
from store.api.deps import Caller, State, audited
from store.api.errors import error_responses
from store.api.schemas.catalog import (
    BaseModelCreate,
    BaseModelList,
    BaseModelOut,
    NamespaceCreate,
    NamespaceList,
    NamespaceOut,
    NamespaceUpdate,
    base_model_out,
    namespace_out,
)
from store.api.schemas.common import page_of
from store.db import session_scope
from store.errors import NotFound
from store.models import BaseModelRecord

router = APIRouter(prefix="/v1", responses=error_responses(401))
NamespaceName = Annotated[str, Path(min_length=1, max_length=63, pattern=NAMESPACE_PATTERN)]


def _ns_missing(name: str) -> str:
    return f"namespace {name!r} not found"


@router.post(
    "/namespaces",
    status_code=201,
    response_model=NamespaceOut,
    responses=error_responses(403, 409, 422),
)
def create_namespace(body: NamespaceCreate, request: Request, caller: Caller, state: State) -> dict:
    """Create a namespace (global admin)."""
    with audited(request, caller, "namespace.create", target=body.name, namespace=body.name):
        caller.require_global_admin()
        with session_scope(state.engine) as session:
            ns = tenancy.create_namespace(session, actor=caller.actor, **body.model_dump())
            return namespace_out(ns)


@router.get("/namespaces", response_model=NamespaceList)
def list_namespaces(caller: Caller, state: State) -> dict:
    """The namespaces the caller can see."""
    with session_scope(state.engine) as session:
        rows = catalog.list_namespaces(session, caller.visible_namespaces())
        data = [namespace_out(ns) for ns in rows]
    return page_of(data, page=1, page_size=max(len(data), 1), total=len(data))


@router.get("/namespaces/{name}", response_model=NamespaceOut, responses=error_responses(400, 404))
def get_namespace(name: NamespaceName, caller: Caller, state: State) -> dict:
    """One namespace (reader of it); 404 when it does not exist or the caller may not see it."""
    caller.require_read(name, _ns_missing(name))
    with session_scope(state.engine) as session:
        return namespace_out(catalog.get_namespace(session, name))


@router.patch(
    "/namespaces/{name}",
    response_model=NamespaceOut,
    responses=error_responses(400, 403, 404, 422),
)
def update_namespace(
    name: NamespaceName, body: NamespaceUpdate, request: Request, caller: Caller, state: State
) -> dict:
    """Change approval policy, quotas or description (admin of the namespace)."""
    with audited(request, caller, "namespace.update", target=name, namespace=name):
        caller.require_role(name, "admin", _ns_missing(name))
        with session_scope(state.engine) as session:
            changes = body.model_dump(exclude_unset=True)
            ns = tenancy.update_namespace(session, name, actor=caller.actor, **changes)
            return namespace_out(ns)


@router.post(
    "/base-models",
    status_code=201,
    response_model=BaseModelOut,
    responses={
        200: {
            "description": "Already registered with the same dimensions: the existing one.",
            "model": BaseModelOut,
        },
        **error_responses(403, 409, 422),
    },
)
def register_base_model(
    body: BaseModelCreate, request: Request, response: Response, caller: Caller, state: State
) -> dict:
    """Register a base model from its HF ``config.json`` (global admin). Re-registering the
    same dimensions answers 200 with the existing entity."""
    with audited(request, caller, "base_model.register", target=body.name):
        caller.require_global_admin()
        with session_scope(state.engine) as session:
            existed = session.get(BaseModelRecord, body.name) is not None
            row = tenancy.register_base_model(session, body.name, body.config, actor=caller.actor)
            if existed:
                response.status_code = 200
            return base_model_out(row)


@router.get("/base-models", response_model=BaseModelList)
def list_base_models(caller: Caller, state: State) -> dict:
    """Every registered base model (any token: base models are shared by all namespaces)."""
    with session_scope(state.engine) as session:
        data = [base_model_out(bm) for bm in catalog.list_base_models(session)]
    return page_of(data, page=1, page_size=max(len(data), 1), total=len(data))


def _get_base_model(session: Session, name: str) -> BaseModelRecord:
    row = session.get(BaseModelRecord, name)
    if row is None:
        raise NotFound(f"base model {name!r} not found")
    return row


# ``:path`` because base model names often carry an organisation (``meta/llama-3-8b``).
@router.get("/base-models/{name:path}", response_model=BaseModelOut, responses=error_responses(404))
def get_base_model(name: str, caller: Caller, state: State) -> dict:
    """One base model by name (which may hold a ``/``, e.g. ``meta/llama-3-8b``)."""
    with session_scope(state.engine) as session:
        return base_model_out(_get_base_model(session, name))
