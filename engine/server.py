"""The OpenAI-compatible HTTP API of one engine (NIM's shape): the app, its error mapping and
its status routes (health, metrics, models). Generation routes are in
``engine/routes_completions.py``.

``model`` in a request selects the base model or any servable adapter. Errors come back in
OpenAI's JSON shape ``{"error": {"message", "type", "param", "code"}}``: 404 unknown model,
400 bad parameters, 429 when the CPU LoRA cache cannot take one more active adapter.
The server only translates HTTP <-> ``GenerationRequest``; residency is the cache's job and
batching the scheduler's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine import routes_completions
from engine.dependencies import CallerDep, RuntimeDep
from engine.metrics import CountRequests
from engine.protocol import OpenAIError, error_response
from engine.runtime import EngineRuntime
from engine.sampling import InvalidSamplingParams
from engine.scheduler import InvalidPrompt
from store.errors import LorafleetError

router = APIRouter()


def create_app(runtime: EngineRuntime, *, manage_runtime: bool = True) -> FastAPI:
    """The FastAPI app over ``runtime``. With ``manage_runtime`` the app's lifespan starts
    and stops the runtime (model thread, refresh subscriber, periodic reconciliation)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_runtime:
            await asyncio.get_running_loop().run_in_executor(None, runtime.start)
        try:
            yield
        finally:
            if manage_runtime:
                runtime.stop()

    app = FastAPI(title="lorafleet engine", lifespan=lifespan)
    app.state.runtime = runtime
    for exc_type, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(exc_type, handler)  # type: ignore[arg-type]
    app.add_middleware(CountRequests, metrics=runtime.metrics)  # counts by the status answered
    app.include_router(router)
    app.include_router(routes_completions.router)
    return app


# -- errors: every refusal answers in OpenAI's shape -----------------------------------------


async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.param, exc.code)


async def _domain_error(_: Request, exc: LorafleetError) -> JSONResponse:
    status = 400 if exc.http_status == 422 else exc.http_status  # an unservable adapter
    param = "model" if status in (400, 404) else None
    return error_response(status, exc.message, param, exc.code)


async def _bad_params(_: Request, exc: InvalidSamplingParams) -> JSONResponse:
    return error_response(400, exc.message, exc.param, "invalid_value")


async def _bad_prompt(_: Request, exc: InvalidPrompt) -> JSONResponse:
    return error_response(400, str(exc), "prompt", "invalid_value")


async def _bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", []) if p != "body"]
    message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid request')}"
    return error_response(400, message, loc[0] if loc else None, "invalid_value")


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Starlette's own refusals (a body that is not JSON, an unknown route, a wrong
    # method) answer in OpenAI's shape too, so clients parse one error format.
    return error_response(exc.status_code, str(exc.detail), None, None)


ERROR_HANDLERS: dict[type[Exception], Any] = {
    OpenAIError: _openai_error,
    LorafleetError: _domain_error,
    InvalidSamplingParams: _bad_params,
    InvalidPrompt: _bad_prompt,
    RequestValidationError: _bad_body,
    StarletteHTTPException: _http_error,
}


# -- status routes ---------------------------------------------------------------------------


@router.get("/v1/health/live")
async def live() -> dict[str, str]:
    return {"object": "health.response", "message": "live"}


@router.get("/v1/health/ready")
async def ready(runtime: RuntimeDep) -> JSONResponse:
    # 503 with the reason until a reconciliation succeeded; adapters the source offers
    # but this engine cannot serve are listed with their reason either way.
    body = {"object": "health.response", "message": "ready" if runtime.ready else "not ready"}
    if not runtime.ready:
        body["reason"] = runtime.not_ready_reason
    # Say loudly when anyone may use every adapter (LORAFLEET_ENGINE_AUTH=none).
    body["auth"] = "registry" if runtime.auth is not None else "none"
    if runtime.auth is None:
        body["warning"] = (
            "LORAFLEET_ENGINE_AUTH=none: no authentication, every caller sees every adapter"
        )
    body["unservable"] = [
        {"model": name, "code": r.code, "reason": r.message}
        for name, r in sorted(runtime.catalog.refusals().items())
    ]
    # The generation applied (its aliases' targets are loaded) and where pins are held.
    body["generation"] = runtime.catalog.generation
    body["aliases"] = len(runtime.catalog.aliases())
    body["pinned"] = runtime.cache.pins(runtime.catalog.pinned)
    return JSONResponse(body, status_code=200 if runtime.ready else 503)


@router.get("/metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _card(runtime: EngineRuntime, model_id: str, parent: str | None) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": runtime.created,
        "owned_by": "lorafleet",
        "root": runtime.model_name,
        "parent": parent,
        "permission": [],
    }


@router.get("/v1/models")
async def models(runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    # The base model, then the adapters and aliases of the namespaces the caller may read
    # (not each adapter's implicit @latest: the bare ns/name always resolves to it).
    data = [_card(runtime, runtime.model_name, None)]
    explicit = [name for name, alias in runtime.catalog.aliases().items() if not alias.implicit]
    names = runtime.catalog.names() + sorted(explicit)
    data += [
        _card(runtime, name, runtime.model_name)
        for name in names
        if caller.may_use(name, runtime.model_name)
    ]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    # Adapter ids hold "/" and "@" (acme/x@1.0.0), hence the path parameter. An id not
    # listed by /v1/models is the same 404 a completion for it gets.
    caller.require_model(model_id, runtime.model_name)
    if model_id == runtime.model_name:
        return _card(runtime, model_id, None)
    if model_id in runtime.catalog.aliases():
        return _card(runtime, model_id, runtime.model_name)
    return _card(runtime, runtime.catalog.get(model_id).name, runtime.model_name)
