"""What every route needs: the app's wiring (``AppState``), the caller (``Principal``) and
the access log."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, DBAPIError, StatementError

from store import audit
from store.auth import Principal, authenticate
from store.blobs import BlobStore
from store.db import session_scope
from store.errors import LorafleetError
from store.metrics import ApiMetrics
from store.settings import StoreSettings

if TYPE_CHECKING:
    from store.api.fleet_views import FleetViews

log = structlog.get_logger(__name__)


@dataclass
class AppState:
    """The composition root's products, shared by every request of one app."""

    settings: StoreSettings
    engine: Engine
    blobs: BlobStore
    admin_token: str | None
    metrics: ApiMetrics
    fleet_views: FleetViews  # the rendered GET /v1/fleet answers, per generation


def get_state(request: Request) -> AppState:
    """The ``AppState`` of the app serving ``request``."""
    return request.app.state.lorafleet


async def _state_dependency(request: Request) -> AppState:
    # A coroutine: FastAPI runs a plain-function dependency in a worker thread, a hop (and
    # a wait for a thread) that reading an attribute does not need.
    return get_state(request)


# The OpenAPI ``bearer`` security scheme (``/docs``' Authorize button), declared by every route
# that depends on ``get_principal``. ``auto_error=False``: ``authenticate`` gives the 401s.
bearer_scheme = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="lft_...",
    description="A registry token: the bootstrap LORAFLEET_ADMIN_TOKEN or one minted with "
    "`lorafleet tokens create` (POST /v1/tokens).",
    auto_error=False,
)


def get_principal(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
) -> Principal:
    """The authenticated caller; ``Unauthorized`` (401) without a valid bearer token."""
    state = get_state(request)
    with session_scope(state.engine) as session:
        principal = authenticate(session, request.headers.get("authorization"), state.admin_token)
    # Kept for the error handlers: a request refused before its route ran is still logged.
    request.state.principal = principal
    return principal


# What routes declare: ``caller: Caller, state: State``.
Caller = Annotated[Principal, Depends(get_principal)]
State = Annotated[AppState, Depends(_state_dependency)]


def remote_addr(request: Request) -> str | None:
    """The peer address recorded in the access log (proxies are not trusted)."""
    return request.client.host if request.client else None


def record(
    request: Request,
    principal: Principal,
    action: str,
    *,
    outcome: str = "ok",
    target: str | None = None,
    namespace: str | None = None,
) -> None:
    """Write one access-log row in its own transaction (after the mutation's own rolled
    back), so it survives a failed mutation; its values are made storable by
    ``audit.record_access``. This never raises: the answer to the caller is already decided,
    and a row that still cannot be written is logged at error level with what it held."""
    state = get_state(request)
    try:
        with session_scope(state.engine) as session:
            audit.record_access(
                session,
                actor=principal.actor,
                action=action,
                outcome=outcome,
                target=target,
                namespace=namespace,
                remote_addr=remote_addr(request),
            )
    except Exception as exc:  # noqa: BLE001 - the request's own status must stand
        log.error(
            "access_log.write_failed",
            actor=principal.actor,
            action=action,
            outcome=outcome,
            target=audit.storable(target, "target"),
            namespace=audit.storable(namespace, "namespace"),
            error=getattr(exc, "message", None) or repr(exc)[:500],
        )


def record_refusal(request: Request, outcome: str) -> None:
    """Log a mutation refused before its route ran (a request that does not validate), as
    action ``request.refused`` with ``METHOD path`` as target; only for an authenticated
    caller (an unauthenticated one was answered 401 first)."""
    principal = getattr(request.state, "principal", None)
    if principal is None or request.method in ("GET", "HEAD", "OPTIONS"):
        return
    target = f"{request.method} {request.url.path}"
    record(request, principal, "request.refused", outcome=outcome, target=target)


def unexpected_code(exc: BaseException) -> str:
    """The error code the API answers a non-``LorafleetError`` with: ``bad_request`` for a
    value the database refused (``sqlalchemy.exc.DataError``, or a ``StatementError`` whose
    value could not be sent), ``internal`` for anything else."""
    return "bad_request" if refused_by_database(exc) else "internal"


def refused_by_database(exc: BaseException) -> bool:
    """Whether ``exc`` is the database (or its driver) refusing a value: a DB-API
    ``DataError``, or a value that could not be bound (a NUL, an unencodable character)."""
    if isinstance(exc, DataError):
        return True
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        return isinstance(exc.orig, (ValueError, UnicodeError))
    return False


@contextmanager
def audited(
    request: Request,
    principal: Principal,
    action: str,
    *,
    target: str | None = None,
    namespace: str | None = None,
) -> Iterator[dict[str, str | None]]:
    """Record ``action`` with outcome ``ok`` or the error code it failed with.

    The yielded dict lets the block fill in ``target``/``namespace`` once it knows them.
    """
    where: dict[str, str | None] = {"target": target, "namespace": namespace}
    try:
        yield where
    except LorafleetError as exc:
        record(request, principal, action, outcome=exc.code, **where)
        raise
    except Exception as exc:
        # What the error handlers will answer (a DataError the database raised: 400).
        record(request, principal, action, outcome=unexpected_code(exc), **where)
        raise
    record(request, principal, action, **where)
