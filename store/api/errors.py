"""The one mapping from errors to HTTP responses: ``{"error": {"code", "message"}}``.

* ``LorafleetError`` subclasses answer with their own ``http_status`` and ``code``.
* Request validation errors answer 400 ``bad_request`` when a query/path/header parameter is
  wrong and 422 ``invalid_body`` when the JSON body is; never a 5xx for bad input.
* A value the database refuses (``sqlalchemy.exc.DataError``, or a ``StatementError`` whose
  value could not be bound) answers 400 ``bad_request``: the last line behind the checks at
  the edge (``store.api.schemas.text``), never a 500.
* Starlette's own HTTP errors (unknown route, wrong method) keep their status, same shape.
* Anything else is a 500 ``internal`` with the details in the log, not in the response.

``error_responses(...)`` documents these answers in the OpenAPI schema; each router and route
lists the statuses it really answers, all with the ``ErrorBody`` model.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import StatementError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from store.api.deps import record_refusal, refused_by_database
from store.api.docs import add_schema_step
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


# What each documented error status means on this API (the OpenAPI ``description``).
_MEANINGS = {
    400: "Bad request: a malformed parameter, form field or multipart body, or a value the "
    "registry refuses (code bad_request, unsafe_path, duplicate_path, ...).",
    401: "Missing, malformed, unknown or revoked bearer token (code unauthorized).",
    403: "The token's role or scope does not allow this (code forbidden).",
    404: "No such resource, or one the token may not see (code not_found).",
    409: "Conflicts with what is stored: already_exists, version_conflict or illegal_transition.",
    413: "The namespace's quota would be exceeded (code quota_exceeded).",
    422: "The JSON body does not validate (code invalid_body), or the adapter or base model "
    "is invalid (the AdapterInvalid code, e.g. bad_safetensors, unknown_base_model).",
    503: "A backing service (database, blob store) is unavailable; retry later.",
}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for ``statuses``, each answered with an ``ErrorBody``."""
    return {s: {"model": ErrorBody, "description": _MEANINGS[s]} for s in statuses}


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
        pattern = (err.get("ctx") or {}).get("pattern")
        if err.get("type") == "string_pattern_mismatch" and pattern:
            # A sentence, not pydantic's "String should match pattern '...'".
            parts.append(f"{loc} {err.get('input')!r} does not match the pattern {pattern}")
        else:
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
    status, code = (422, "invalid_body") if in_body else (400, "bad_request")
    await run_in_threadpool(record_refusal, request, code)
    return error_response(status, code, _describe(errors))


async def _statement_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StatementError)
    if not refused_by_database(exc):
        return await _unexpected(request, exc)
    # The statement is not logged (it may hold the caller's hostile value), its kind is.
    log.warning(
        "api.value_refused_by_database",
        path=request.url.path,
        error=type(getattr(exc, "orig", None) or exc).__name__,
    )
    return error_response(400, "bad_request", "a value was refused by the database")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}) or None)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("api.unhandled", path=request.url.path, method=request.method)
    return error_response(500, "internal", "internal server error")


def _drop_default_validation_answers(schema: dict[str, Any]) -> None:
    """Remove FastAPI's automatic 422 ``HTTPValidationError`` answers: this API answers bad
    parameters with 400 and bad bodies with 422, both as ``ErrorBody``, and documents them
    per route."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422", {})
            media = answer.get("content", {}).get("application/json", {})
            if media.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                del operation["responses"]["422"]
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def document_errors(app: FastAPI) -> None:
    """Make ``app``'s OpenAPI schema list only the error answers the API really gives."""
    add_schema_step(app, _drop_default_validation_answers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping on ``app``; call once from the app factory."""
    app.add_exception_handler(LorafleetError, _lorafleet_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(StatementError, _statement_error)
    app.add_exception_handler(Exception, _unexpected)
