"""The Hugging Face Hub download protocol at ``/v1/hf`` (``HF_ENDPOINT=<registry>/v1/hf``):
``model_info``, ``list_repo_tree`` / ``list_repo_files``, and ``resolve`` (``hf_hub_download``,
``snapshot_download``, ``hf download``, ``PeftModel.from_pretrained``). What repos, revisions
and commit ids are is ``store.hf.repos``; uploads are ``routes_hf_commit``.

Errors have the Hub's shape, not the REST API's: ``{"error": message}`` with
``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``, else the
registry's own code such as ``unauthorized``) and ``X-Error-Message``, which is what
``huggingface_hub`` turns into its typed errors. No ``X-Xet-*`` header is ever sent, so
clients download over plain HTTP. Not in the OpenAPI schema: it is the Hub's protocol,
documented by the Hub (and the README)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Coroutine, Iterator
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from fastapi.routing import APIRoute

from store.api.deps import AppState, Caller, State, audited
from store.auth import Principal
from store.blobs import CHUNK, BlobStore
from store.db import session_scope
from store.errors import BadRequest, LorafleetError
from store.hf import repos
from store.hf.repos import RepoFile, Revision

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(LorafleetError):
    code = "range_not_satisfiable"
    http_status = 416


def hf_error(exc: LorafleetError) -> JSONResponse:
    """An error as the Hub answers it: ``{"error": ...}`` and ``X-Error-Code``/``-Message``."""
    code = getattr(exc, "hf_code", None) or exc.code
    one_line = " ".join(exc.message.split())[:300]
    headers = {
        "X-Error-Code": code,
        "X-Error-Message": one_line.encode("ascii", "replace").decode("ascii"),
    }
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": exc.message}, status_code=exc.http_status, headers=headers)


class HfRoute(APIRoute):
    """A route whose errors (the bearer check and parameter validation included) leave in
    the Hub's shape (``hf_error``) instead of the REST API's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except LorafleetError as exc:
                return hf_error(exc)
            except RequestValidationError as exc:
                problems = "; ".join(str(e.get("msg", "invalid")) for e in exc.errors()[:3])
                return hf_error(BadRequest(f"bad request: {problems}"))

        return route


router = APIRouter(prefix="/v1/hf", route_class=HfRoute, include_in_schema=False)


def _resolve(state: AppState, caller: Principal, ns: str, name: str, revision: str) -> Revision:
    with session_scope(state.engine) as session:
        return repos.resolve(session, state.blobs, caller, ns, name, revision)


@router.get("/api/models/{namespace}/{name}")
def model_info(namespace: str, name: str, caller: Caller, state: State) -> dict[str, Any]:
    """``HfApi.model_info`` at ``main``."""
    return repos.model_info(_resolve(state, caller, namespace, name, repos.MAIN))


@router.get("/api/models/{namespace}/{name}/revision/{revision}")
def model_info_at(
    namespace: str, name: str, revision: str, caller: Caller, state: State
) -> dict[str, Any]:
    """``HfApi.model_info(revision=...)``; ``snapshot_download`` reads ``sha`` from it."""
    return repos.model_info(_resolve(state, caller, namespace, name, revision))


@router.get("/api/models/{namespace}/{name}/tree/{revision}")
@router.get("/api/models/{namespace}/{name}/tree/{revision}/{path:path}")
def list_tree(
    namespace: str,
    name: str,
    revision: str,
    caller: Caller,
    state: State,
    path: str = "",
    recursive: bool = False,
) -> list[dict[str, object]]:
    """``HfApi.list_repo_tree``: one page holding every entry (no ``Link`` header)."""
    found = _resolve(state, caller, namespace, name, revision)
    return repos.tree(found, path, recursive=recursive)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for a single ``bytes=`` range; None for no range. A range
    that cannot be satisfied is ``BadRequest`` with code ``range_not_satisfiable`` (416)."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None or match.groups() == ("", ""):
        return None  # not a single byte range: RFC 9110 lets the server send it all
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiable(f"range {header!r} is outside the file's {size} bytes")
    return start, end


def _range_chunks(blobs: BlobStore, key: str, start: int, end: int) -> Iterator[bytes]:
    """Bytes ``start..end`` of a blob: a seek for a file store, a skip over the stream
    otherwise (S3 answers with a redirect before this is needed)."""
    path_for = getattr(blobs, "path_for", None)
    if callable(path_for):
        with path_for(key).open("rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0 and (chunk := fh.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk
        return
    offset = 0
    for chunk in blobs.iter_chunks(key):
        lo, hi = max(start - offset, 0), min(end + 1 - offset, len(chunk))
        if lo < hi:
            yield chunk[lo:hi]
        offset += len(chunk)
        if offset > end:
            return


def _file_headers(found: Revision, f: RepoFile) -> dict[str, str]:
    return {
        "X-Repo-Commit": found.commit_id,
        "ETag": f'"{f.sha256}"',
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{f.path.rsplit("/", 1)[-1]}"',
    }


@router.api_route("/{namespace}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
def resolve_file(
    namespace: str,
    name: str,
    revision: str,
    path: str,
    request: Request,
    caller: Caller,
    state: State,
) -> Response:
    """A file of a revision (``hf_hub_download``). With an S3 blob store: 302 to a presigned
    URL, with ``X-Linked-Etag`` / ``X-Linked-Size`` carrying what the target serves."""
    found = _resolve(state, caller, namespace, name, revision)
    try:
        f = found.file(path)
    except LorafleetError as exc:
        # The Hub names the commit on a missing file too, so clients cache the absence.
        answer = hf_error(exc)
        answer.headers["X-Repo-Commit"] = found.commit_id
        return answer
    headers = _file_headers(found, f)
    presign = getattr(state.blobs, "presigned_get", None)
    if callable(presign) and f.content is None:
        expires = timedelta(seconds=state.settings.hf_presign_seconds)
        headers |= {"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)}
        with audited(request, caller, "adapter.download", namespace=namespace) as where:
            where["target"] = f"{found.version.id}/{f.path}"
            url = presign(f.blob_key, expires)
        return RedirectResponse(url, status_code=302, headers=headers)
    wanted = _byte_range(request.headers.get("range"), f.size)
    start, end = wanted or (0, f.size - 1)
    headers["Content-Length"] = str(end - start + 1 if f.size else 0)
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    with audited(request, caller, "adapter.download", namespace=namespace) as where:
        where["target"] = f"{found.version.id}/{f.path}"
        if f.content is not None:
            chunks = iter((f.content[start : end + 1],))
        elif wanted is None:
            chunks = state.blobs.iter_chunks(f.blob_key)
        else:
            chunks = _range_chunks(state.blobs, f.blob_key, start, end)
        first = next(chunks, b"")  # a missing blob is a clean error, not a cut-off 200
    state.metrics.downloads.inc()
    state.metrics.download_bytes.inc(end - start + 1 if f.size else 0)
    return StreamingResponse(
        itertools.chain((first,), chunks),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )
