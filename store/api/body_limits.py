"""JSON request bodies are bounded before anything parses them.

FastAPI reads a JSON body with ``json.loads`` whole: no size cap, nesting limited only by the
interpreter's recursion limit, duplicate keys and ``NaN`` taken silently, and what it accepts
is stored and must then be served by every read route. ``BoundedJsonBodies`` (pure ASGI, so
it sees the bytes first) answers:

* 413 ``body_too_large`` for a body above ``MAX_JSON_BODY_BYTES``, from ``Content-Length``
  when given, else as soon as the streamed body crosses it (never buffered past the cap);
* 422 ``invalid_body`` for a body ``events.untrusted.load_json`` refuses with
  ``REQUEST_JSON`` (too deep, too many items, huge integers, NaN/Infinity, duplicate keys,
  control characters, not UTF-8);

and passes every other request on with its body replayed unchanged. A refusal is logged in
the access log as ``request.refused`` (an unauthenticated caller gets its 401 instead). Bodies that are not
JSON (the multipart upload) are left to their own bounded parser (``store.api.uploads``), and
so are the raw-bytes routes named by ``raw_body_prefixes`` (the HF Git LFS object upload).
"""

from __future__ import annotations

from dataclasses import replace

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from events.untrusted import STORED_JSON, UntrustedJson, load_json
from store.api.deps import get_principal, record_refusal
from store.api.errors import error_response
from store.errors import LorafleetError

__all__ = ["MAX_JSON_BODY_BYTES", "REQUEST_JSON", "BoundedJsonBodies"]

# A body carries at most one 1 MiB JSON value (custom fields, a base model's config: the
# upload's field cap) plus a few short fields.
MAX_JSON_BODY_BYTES = 2 << 20
REQUEST_JSON = replace(STORED_JSON, max_bytes=MAX_JSON_BODY_BYTES)


def _is_json(scope: Scope) -> bool:
    """Whether FastAPI would read this body as JSON: a ``json`` media type, or none."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return True


class BoundedJsonBodies:
    """ASGI middleware: the limits above, on every HTTP request with a JSON body."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int = MAX_JSON_BODY_BYTES,
        raw_body_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Routes whose body is raw bytes (the Git LFS object PUT, which huggingface_hub sends
        # with no Content-Type): they bound and check their bodies themselves.
        self.raw_body_prefixes = raw_body_prefixes

    def _is_bounded(self, scope: Scope) -> bool:
        return (
            scope["type"] == "http"
            and scope["method"] not in ("GET", "HEAD")
            and not scope["path"].startswith(self.raw_body_prefixes)
            and _is_json(scope)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._is_bounded(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _refuse(scope, send, 413, "body_too_large", self._too_large())
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _refuse(scope, send, 413, "body_too_large", self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            try:
                load_json(body, REQUEST_JSON, what="the JSON body")
            except UntrustedJson as exc:
                await _refuse(scope, send, 422, "invalid_body", str(exc)[:1000])
                return
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self) -> str:
        return f"the JSON body is larger than {self.max_bytes} bytes"


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _refuse(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    """Answer in the API's one error shape (``store.api.errors``) without running the app,
    and log the refusal like one of a body that does not validate (``record_refusal``):
    the caller is authenticated first, and answered 401 if that fails."""
    request = Request(scope)
    try:
        await run_in_threadpool(get_principal, request)
    except LorafleetError as exc:
        status, code, message = exc.http_status, exc.code, exc.message
    else:
        await run_in_threadpool(record_refusal, request, code)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    response = error_response(status, code, message, headers)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})
