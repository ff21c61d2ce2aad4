"""Health checks, Prometheus metrics and the fleet view engines reconcile against."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from store import catalog
from store.api.deps import State, get_principal
from store.api.errors import error_responses
from store.api.schemas.ops import FleetView, Liveness, Readiness
from store.auth import Principal
from store.db import ensure_migrated, session_scope
from store.errors import LorafleetError

router = APIRouter()


@router.get("/v1/health/live", response_model=Liveness)
def live() -> dict[str, str]:
    """The process answers (no dependencies checked; no auth)."""
    return {"status": "ok"}


@router.get(
    "/v1/health/ready",
    response_model=Readiness,
    responses={
        503: {
            "description": "A dependency failed: ``checks`` says which, ``error`` says how.",
            "model": Readiness,
        }
    },
)
def ready(state: State) -> JSONResponse:
    """200 when the database (migrated) and the blob store answer, else 503 with which failed."""
    checks: dict[str, str] = {}
    try:
        with state.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        ensure_migrated(state.engine)
        checks["database"] = "ok"
    except (LorafleetError, sa.exc.SQLAlchemyError) as exc:
        checks["database"] = getattr(exc, "message", None) or str(exc).splitlines()[0]
    try:
        state.blobs.check()
        checks["blob_store"] = "ok"
    except LorafleetError as exc:
        checks["blob_store"] = exc.message
    healthy = all(v == "ok" for v in checks.values())
    body: dict[str, Any] = {"status": "ok" if healthy else "unavailable", "checks": checks}
    if not healthy:
        body["error"] = {
            "code": "unavailable",
            "message": "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok"),
        }
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/metrics", include_in_schema=False)
def metrics(state: State) -> Response:
    """Prometheus exposition. Open like the health checks: aggregate counts only, no names."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/fleet",
    response_model=FleetView,
    responses={
        **error_responses(400, 401, 404),
        404: {
            **error_responses(404)[404],
            "description": "``base_model`` is not registered (code unknown_base_model; the "
            "message names the closest registered base model).",
        },
    },
)
def fleet(
    base_model: Annotated[str, Query(min_length=1)],
    caller: Annotated[Principal, Depends(get_principal)],
    state: State,
) -> Response:
    """``{"generation": N, "adapters": [...], "aliases": [...]}``: the ready versions of
    ``base_model`` with their canonical file digests, and the aliases routing to them.
    Engines use a global reader token and see every tenant; a namespace token sees only
    its own namespace's adapters and aliases. Rendered once per generation
    (``store.api.fleet_views``).

    An unregistered ``base_model`` is 404 ``unknown_base_model``, never an empty list: a typo
    in an engine's or ``lorafleet pull``'s configuration must fail, not serve (or delete)
    everything."""
    import difflib

    from store.errors import NotFound
    from store.models import BaseModelRecord

    with session_scope(state.engine) as session:
        if session.get(BaseModelRecord, base_model) is None:
            known = [m.name for m in catalog.list_base_models(session)]
            close = difflib.get_close_matches(base_model, known, n=1, cutoff=0.6)
            if close:
                hint = f"; did you mean {close[0]!r}?"
            elif known:
                shown = ", ".join(repr(k) for k in known[:10])
                hint = f"; registered: {shown}{', ...' if len(known) > 10 else ''}"
            else:
                hint = "; no base model is registered yet (lorafleet base-models add)"
            raise NotFound(
                f"base model {base_model!r} is not registered{hint}", code="unknown_base_model"
            )
        body = state.fleet_views.render(session, base_model, caller.visible_namespaces())
    return Response(body, media_type="application/json")
