"""Tokens: mint, list, revoke, and ``/v1/auth/whoami`` (what engines ask about a caller)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from sqlmodel import select

from events.models import NAMESPACE_PATTERN
from store import catalog
from store.api.deps import Caller, State, audited
from store.api.errors import error_responses
from store.api.schemas.tokens import (
    TokenCreate,
    TokenInfo,
    TokenList,
    TokenOut,
    WhoAmI,
    token_info,
    whoami_out,
)
from store.auth import create_token, hash_token, list_tokens, revoke_token
from store.db import session_scope
from store.models import ApiToken, Namespace

router = APIRouter(prefix="/v1", responses=error_responses(401))


@router.post(
    "/tokens",
    status_code=201,
    response_model=TokenOut,
    responses=error_responses(400, 403, 404, 422),
)
def mint_token(body: TokenCreate, request: Request, caller: Caller, state: State) -> dict[str, Any]:
    """Mint a bearer token: a global admin mints any; a namespace admin mints tokens of its
    namespace. ``expires_at`` (optional) ends its validity. The plaintext is in this answer
    only."""
    target = f"token:{body.name}@{body.namespace or '*'}"
    with audited(request, caller, "token.create", target=target, namespace=body.namespace):
        if body.namespace is None:
            caller.require_global_admin()
        else:
            caller.require_role(body.namespace, "admin", f"namespace {body.namespace!r} not found")
        with session_scope(state.engine) as session:
            if body.namespace is not None:
                catalog.get_namespace(session, body.namespace)
            token = create_token(
                session,
                body.role,
                body.namespace,
                body.name,
                created_by=caller.actor,
                expires_at=body.expires_at,
            )
            row = session.exec(
                select(ApiToken).where(ApiToken.token_hash == hash_token(token))
            ).one()
            return {**token_info(row), "token": token}


@router.get("/tokens", response_model=TokenList, responses=error_responses(403, 404))
def get_tokens(
    caller: Caller,
    state: State,
    namespace: Annotated[
        str | None, Query(min_length=1, max_length=63, pattern=NAMESPACE_PATTERN)
    ] = None,
) -> dict[str, Any]:
    """The tokens of a namespace (its admin), or every token (global admin, no
    ``namespace``); never a secret. Revoked and expired ones are listed with their dates."""
    with session_scope(state.engine) as session:
        rows = list_tokens(session, caller, namespace)
        return {"object": "list", "data": [token_info(row) for row in rows]}


@router.delete("/tokens/{token_id}", response_model=TokenInfo, responses=error_responses(403, 404))
def delete_token(
    token_id: Annotated[int, Path(ge=1, le=2**62)], request: Request, caller: Caller, state: State
) -> dict[str, Any]:
    """Revoke a token (admin of its namespace; a global token: global admin). From this
    answer on it is 401 at the registry; engines drop it when the revocation event reaches
    them. Idempotent: revoking again answers the same revoked token."""
    with audited(request, caller, "token.revoke", target=f"token:{token_id}") as where:
        with session_scope(state.engine) as session:
            row = revoke_token(session, caller, token_id)
            where["namespace"] = row.namespace
            return token_info(row)


@router.get("/auth/whoami", response_model=WhoAmI)
def whoami(caller: Caller, state: State) -> dict[str, Any]:
    """Who this bearer token is: its role, scope, the namespaces it may read now and when it
    expires. 401 for a missing, unknown, revoked or expired token. Engines ask this once per
    token and cache the answer for a bounded time."""
    with session_scope(state.engine) as session:
        query = select(Namespace.name).order_by(Namespace.name)
        if caller.namespace is not None:
            query = query.where(Namespace.name == caller.namespace)
        names = list(session.exec(query).all())
    return whoami_out(caller, names)
