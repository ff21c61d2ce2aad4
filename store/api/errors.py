"""The one mapping from errors to HTTP responses: ``{"error": {"code", "message"}}``.

* ``LorafleetError`` subclasses answer with their own ``http_status`` and ``code``.
* Request validation errors answer 400 ``bad_request`` when a query/path/header parameter is
  wrong and 422 ``invalid_body`` when the JSON body is; never a 5xx for bad input.
* Starlette's own HTTP errors (unknown route, wrong method) keep their status, same shape.
* Anything else is a 500 ``internal`` with the details in the log, not in the response.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from store.errors import LorafleetError

log = structlog.get_logger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error body every failing request gets."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "request"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


async def _lorafleet_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LorafleetError)
    if exc.http_status >= 500:
        log.warning("api.error", path=request.url.path, code=exc.code, message=exc.message)
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    return error_response(exc.http_status, exc.code, exc.message, headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    in_body = any(err.get("loc", ("",))[0] == "body" for err in errors)
    if in_body:
        return error_response(422, "invalid_body", _describe(errors))
    return error_response(400, "bad_request", _describe(errors))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}) or None)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("api.unhandled", path=request.url.path, method=request.method)
    return error_response(500, "internal", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping on ``app``; call once from the app factory."""
    app.add_exception_handler(LorafleetError, _lorafleet_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
