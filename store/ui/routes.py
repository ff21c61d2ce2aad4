"""The console's pages and actions under ``/ui``. Each signs the caller in from the session
cookie, then does what the matching REST route does: the same service functions, the same
role checks (``Principal``), the same access-log rows (``audited``). Another tenant's
version is the same 404 page as a missing one. Forms post back here with a CSRF token
(``store.ui.session``) and are answered with a redirect and a flash of the outcome."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import quote, unquote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from store import catalog, governance, history, registry
from store.api.deps import AppState, audited, get_state
from store.api.routes_adapters import visible_adapter
from store.approval import Status, parse_status
from store.auth import Principal, authenticate
from store.db import session_scope
from store.errors import BadRequest, Forbidden, LorafleetError, Unauthorized
from store.evaluation import get_evaluation
from store.outbox import current_generation
from store.ui import views
from store.ui.session import (
    FLASH_COOKIE,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SESSION_MAX_AGE_S,
    ConsoleKeys,
    clear_cookie,
    login_ok,
    new_login_nonce,
    set_cookie,
)

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=str(files("store.ui") / "templates"))
templates.env.globals["age"] = views.age
KEYS = ConsoleKeys()
PAGE_SIZE = 25
FormText = Annotated[str | None, Form()]


class SignedIn:
    """The console's caller: who (``principal``) and the session token the CSRF hangs on."""

    def __init__(self, principal: Principal, token: str) -> None:
        self.principal, self.token = principal, token

    def may(self, namespace: str, role: str) -> bool:
        """Whether the caller holds ``role`` in ``namespace`` (what buttons to show)."""
        try:
            self.principal.require_role(namespace, role, "")
        except LorafleetError:
            return False
        return True


def _signed_in(request: Request) -> SignedIn | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    state: AppState = get_state(request)
    try:
        with session_scope(state.engine) as session:
            principal = authenticate(session, f"Bearer {token}", state.admin_token)
    except Unauthorized:
        return None
    request.state.principal = principal
    return SignedIn(principal, token)


def _render(
    request: Request, me: SignedIn | None, name: str, status: int = 200, **context: Any
) -> Response:
    flash = request.cookies.get(FLASH_COOKIE)
    context.update(
        me=me,
        csrf=KEYS.csrf_for(me.token) if me else None,
        flash=unquote(flash) if flash else None,
    )
    response = templates.TemplateResponse(request, name, context, status_code=status)
    if flash:
        clear_cookie(response, FLASH_COOKIE)
    return response


def _error(request: Request, me: SignedIn | None, exc: LorafleetError) -> Response:
    return _render(request, me, "error.html", exc.http_status, code=exc.code, message=exc.message)


def _page(request: Request, build: Callable[[SignedIn], Response]) -> Response:
    """Sign in from the cookie (else to the login page) and build the page; a domain error
    becomes the error page with its status."""
    me = _signed_in(request)
    if me is None:
        return RedirectResponse("/ui/login", status_code=303)
    try:
        return build(me)
    except LorafleetError as exc:
        return _error(request, me, exc)


def _action(request: Request, csrf: str | None, act: Callable[[SignedIn], Response]) -> Response:
    """A form's POST: signed in, the CSRF token checked before anything runs."""
    me = _signed_in(request)
    if me is None:
        return _error(request, None, Unauthorized("sign in first"))
    if not KEYS.csrf_ok(me.token, csrf):
        return _error(request, me, Forbidden("missing or wrong CSRF token", code="csrf"))
    try:
        return act(me)
    except LorafleetError as exc:
        return _error(request, me, exc)


def _back(request: Request, url: str, flash: str) -> Response:
    response = RedirectResponse(url, status_code=303)
    set_cookie(response, request, FLASH_COOKIE, quote(flash), 60)
    return response


# --- sign-in ------------------------------------------------------------------------------


@router.get("")
def home() -> Response:
    return RedirectResponse("/ui/queue", status_code=303)


@router.get("/login")
def login_form(request: Request) -> Response:
    nonce = new_login_nonce()
    response = _render(request, None, "login.html", login_csrf=nonce)
    set_cookie(response, request, LOGIN_COOKIE, nonce, 600)
    return response


@router.post("/login")
def login(request: Request, token: FormText = None, csrf: FormText = None) -> Response:
    if not login_ok(request, csrf):
        return _error(request, None, Forbidden("missing or wrong CSRF token", code="csrf"))
    state: AppState = get_state(request)
    try:
        with session_scope(state.engine) as session:
            authenticate(session, f"Bearer {(token or '').strip()}", state.admin_token)
    except Unauthorized as exc:
        nonce = new_login_nonce()
        response = _render(request, None, "login.html", 401, login_csrf=nonce, error=exc.message)
        set_cookie(response, request, LOGIN_COOKIE, nonce, 600)
        return response
    response = RedirectResponse("/ui/queue", status_code=303)
    set_cookie(response, request, SESSION_COOKIE, (token or "").strip(), SESSION_MAX_AGE_S)
    clear_cookie(response, LOGIN_COOKIE)
    return response


@router.post("/logout")
def logout(request: Request, csrf: FormText = None) -> Response:
    def act(me: SignedIn) -> Response:
        response = RedirectResponse("/ui/login", status_code=303)
        clear_cookie(response, SESSION_COOKIE)
        return response

    return _action(request, csrf, act)


# --- pages --------------------------------------------------------------------------------


@router.get("/adapters")
def adapters_page(
    request: Request,
    namespace: str | None = None,
    base_model: str | None = None,
    status: str | None = None,
    search: Annotated[str | None, Query(max_length=128)] = None,
    sort: str = "-created_at",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> Response:
    filters = {
        "namespace": namespace or None,
        "base_model": base_model or None,
        "status": status or None,
        "search": search or None,
        "sort": sort,
    }

    def build(me: SignedIn) -> Response:
        state: AppState = get_state(request)
        if filters["status"]:
            parse_status(filters["status"])
        with session_scope(state.engine) as session:
            rows, total = catalog.list_adapters(
                session,
                namespaces=me.principal.visible_namespaces(),
                page=page,
                page_size=PAGE_SIZE,
                **filters,
            )
            namespaces = catalog.list_namespaces(session, me.principal.visible_namespaces())
        return _render(
            request,
            me,
            "adapters.html",
            rows=rows,
            total=total,
            page=page,
            pages=max(1, -(-total // PAGE_SIZE)),
            filters=filters,
            statuses=[s.value for s in Status],
            namespaces=[ns.name for ns in namespaces],
            query=lambda **kw: _query({**filters, "page": page, **kw}),
        )

    return _page(request, build)


@router.get("/queue")
def queue_page(request: Request, page: Annotated[int, Query(ge=1, le=1_000_000)] = 1) -> Response:
    def build(me: SignedIn) -> Response:
        state: AppState = get_state(request)
        with session_scope(state.engine) as session:
            rows, total = catalog.list_adapters(
                session,
                namespaces=me.principal.visible_namespaces(),
                status=Status.PENDING,
                sort="created_at",
                page=page,
                page_size=PAGE_SIZE,
            )
        return _render(
            request,
            me,
            "queue.html",
            rows=rows,
            total=total,
            page=page,
            pages=max(1, -(-total // PAGE_SIZE)),
        )

    return _page(request, build)


@router.get("/adapters/{adapter_id}")
def version_page(request: Request, adapter_id: str) -> Response:
    def build(me: SignedIn) -> Response:
        state: AppState = get_state(request)
        with session_scope(state.engine) as session:
            version = visible_adapter(session, me.principal, adapter_id)
            ready = views.ready_counterpart(session, version)
            return _render(
                request,
                me,
                "version.html",
                v=version,
                files=catalog.list_files(session, version.id),
                steps=history.list_history(session, version.id),
                shapes=views.module_shapes(session, version),
                series=views.metric_series(version.metrics),
                scalars=views.scalar_metrics(version.metrics),
                chart={"w": views.CHART_W, "h": views.CHART_H},
                ready=ready,
                compare=views.comparison(version, ready) if ready else [],
                evaluation=get_evaluation(session, version.id),
                fleet_generation=current_generation(session),
                may_write=me.may(version.namespace, "writer"),
                may_admin=me.may(version.namespace, "admin"),
            )

    return _page(request, build)


@router.get("/audit")
def audit_page(
    request: Request,
    namespace: str | None = None,
    adapter: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: Annotated[str | None, Query(alias="from")] = None,
    until: Annotated[str | None, Query(alias="to")] = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> Response:
    filters = {
        "namespace": namespace or None,
        "adapter": adapter or None,
        "actor": actor or None,
        "action": action or None,
    }
    bounds = {"from": since or None, "to": until or None}

    def build(me: SignedIn) -> Response:
        state: AppState = get_state(request)
        if filters["namespace"]:
            me.principal.require_read(
                filters["namespace"], f"namespace {filters['namespace']!r} not found"
            )
        with session_scope(state.engine) as session:
            rows, total = governance.list_audit(
                session,
                namespaces=me.principal.visible_namespaces(),
                since=_when(bounds["from"]),
                until=_when(bounds["to"]),
                page=page,
                page_size=PAGE_SIZE,
                **filters,
            )
        return _render(
            request,
            me,
            "audit.html",
            rows=rows,
            total=total,
            page=page,
            pages=max(1, -(-total // PAGE_SIZE)),
            filters={**filters, **bounds},
            query=lambda **kw: _query({**filters, **bounds, "page": page, **kw}),
        )

    return _page(request, build)


# --- actions ------------------------------------------------------------------------------

_VERBS = {"ready": "approved", "rejected": "rejected", "archived": "archived"}


@router.post("/adapters/{adapter_id}/status")
def change_status(
    request: Request,
    adapter_id: str,
    to: FormText = None,
    reason: FormText = None,
    drop_from_aliases: FormText = None,
    csrf: FormText = None,
) -> Response:
    """Approve, reject or archive, as ``PATCH /v1/adapters/{id}`` does (writer); archiving
    a version an alias routes to is refused (409 ``alias_target``) unless the form's
    ``drop_from_aliases`` box is ticked."""

    def act(me: SignedIn) -> Response:
        if to not in _VERBS:
            raise BadRequest("to must be ready, rejected or archived")
        state: AppState = get_state(request)
        with audited(request, me.principal, f"adapter.{to}", target=adapter_id) as where:
            with session_scope(state.engine) as session:
                version = visible_adapter(session, me.principal, adapter_id)
                where["namespace"] = version.namespace
                me.principal.require_role(
                    version.namespace, "writer", f"adapter {adapter_id} not found"
                )
                version = registry.transition(
                    session,
                    adapter_id,
                    to,
                    actor=me.principal.actor,
                    reason=reason or None,
                    drop_from_aliases=drop_from_aliases == "true",
                )
                flash = _outcome(version, _VERBS[to])
        return _back(request, f"/ui/adapters/{adapter_id}", flash)

    return _action(request, csrf, act)


@router.post("/adapters/{adapter_id}/restore")
def restore(
    request: Request, adapter_id: str, reason: FormText = None, csrf: FormText = None
) -> Response:
    """Restore an archived version, as ``POST /v1/adapters/{id}/restore`` does (admin)."""

    def act(me: SignedIn) -> Response:
        state: AppState = get_state(request)
        with audited(request, me.principal, "adapter.restore", target=adapter_id) as where:
            with session_scope(state.engine) as session:
                version = visible_adapter(session, me.principal, adapter_id)
                where["namespace"] = version.namespace
                me.principal.require_role(
                    version.namespace, "admin", f"adapter {adapter_id} not found"
                )
                version = governance.restore(
                    session, adapter_id, actor=me.principal.actor, reason=reason or ""
                )
                flash = _outcome(version, "restored")
        return _back(request, f"/ui/adapters/{adapter_id}", flash)

    return _action(request, csrf, act)


def _outcome(version: Any, verb: str) -> str:
    text = f"{version.coordinates} {verb}: now {version.status}"
    if version.status in (Status.READY, Status.ARCHIVED) and version.generation:
        text += f", fleet generation {version.generation}"
    return text


def _query(params: dict[str, Any]) -> str:
    return "&".join(f"{k}={quote(str(v))}" for k, v in params.items() if v not in (None, ""))


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"not an ISO 8601 time: {value[:40]!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
