"""The Hugging Face Hub upload protocol at ``/v1/hf``: ``create_repo``, ``validate-yaml``,
``preupload`` and ``commit`` (``HfApi.upload_folder`` / ``create_commit``, ``hf upload``).
What a commit becomes is ``store.hf.commits`` (a commit creates the version its revision
names); errors leave in the Hub's shape (``routes_hf.HfRoute``).

Preupload answers every file ``uploadMode: "regular"`` (inline base64 in the commit) by
default: a stock client with ``hf_xet`` installed sends ``lfs`` files to Xet storage and
nothing else, which the registry does not speak. With ``LORAFLEET_HF_UPLOAD_MODE=lfs`` it
answers ``lfs``, for clients that run with ``HF_HUB_DISABLE_XET=1``: they PUT each file
through ``routes_hf_lfs`` and the commit names it in an ``lfsFile`` line."""

from __future__ import annotations

import base64
import binascii
import json
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

import structlog
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from store import catalog
from store.api.deps import AppState, Caller, State, audited
from store.api.routes_hf import HfRoute
from store.api.uploads import safe_relative_path
from store.approval import Status
from store.auth import Principal
from store.blobs import BlobStore, blob_key
from store.db import session_scope
from store.errors import AdapterInvalid, AlreadyExists, BadRequest, NotFound
from store.formats.spec import ValidationLimits
from store.hf import commits, lfs
from store.hf.repos import Revision

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/v1/hf", route_class=HfRoute, include_in_schema=False)
MAX_SMALL_JSON = 1 << 20  # create-repo, validate-yaml and preupload bodies
MAX_FILES = 256


def endpoint_url(request: Request) -> str:
    """This API's ``HF_ENDPOINT`` as the caller reached it."""
    return str(request.base_url).rstrip("/") + "/v1/hf"


async def read_small_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object of at most ``MAX_SMALL_JSON`` bytes; ``BadRequest`` else."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SMALL_JSON:
            raise BadRequest(f"request body over {MAX_SMALL_JSON} bytes", code="body_too_large")
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise BadRequest("the request body is not JSON", code="invalid_body") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_body")
    return data


def require_writable(state: AppState, caller: Principal, namespace: str, name: str) -> None:
    """``store.hf.commits.check_writable`` in its own unit of work."""
    with session_scope(state.engine) as session:
        commits.check_writable(session, caller, namespace, name)


@router.post("/api/repos/create")
async def create_repo(request: Request, caller: Caller, state: State) -> dict[str, Any]:
    """``HfApi.create_repo``: a model repo ``organization/name`` in an existing namespace the
    token may write. Nothing is stored: the repo holds versions once a commit creates one."""
    data = await read_small_json(request)
    if data.get("type") not in (None, "model"):
        raise BadRequest("only model repos exist here (repo_type='model')")
    name, namespace = data.get("name"), data.get("organization")
    if isinstance(name, str) and "/" in name and namespace is None:
        namespace, name = name.split("/", 1)
    if not isinstance(namespace, str) or not isinstance(name, str):
        raise BadRequest("create a repo as namespace/name (the namespace must exist)")
    await run_in_threadpool(require_writable, state, caller, namespace, name)
    # ``/models/`` in the URL: huggingface_hub < 1.0 reads the repo type from the segment
    # before the repo id when the endpoint has a path (``/v1/hf``); 1.x and 2.x accept it.
    url = f"{endpoint_url(request)}/models/{namespace}/{name}"
    return {"url": url, "name": f"{namespace}/{name}"}


@router.post("/api/validate-yaml")
async def validate_yaml(request: Request, caller: Caller) -> dict[str, Any]:
    """``ModelCard.validate``: the card's YAML front matter must parse to a mapping."""
    content = (await read_small_json(request)).get("content")
    if not isinstance(content, str):
        raise BadRequest("validate-yaml needs {'content': <the model card>}")
    commits.front_matter(content)
    return {"errors": [], "warnings": []}


@router.post("/api/models/{namespace}/{name}/branch/{branch}")
async def create_branch(
    namespace: str, name: str, branch: str, caller: Caller, state: State
) -> dict[str, Any]:
    """``HfApi.create_branch`` (``hf upload --revision``): a branch is the version the next
    commit to it creates, so nothing is stored; 409 when that version exists already."""
    await run_in_threadpool(require_writable, state, caller, namespace, name)
    commits.check_revision(branch)
    await run_in_threadpool(_branch_is_free, state, namespace, name, branch)
    return {}


def _branch_is_free(state: AppState, namespace: str, name: str, version: str) -> None:
    with session_scope(state.engine) as session:
        try:
            existing = catalog.get_version(session, namespace, name, version)
        except NotFound:
            return
        if existing.status == Status.FAILED:  # a failed version is replaced by the next upload
            return
    raise AlreadyExists(f"{namespace}/{name}@{version} exists; versions are immutable")


@router.post("/api/models/{namespace}/{name}/preupload/{revision}")
async def preupload(
    namespace: str, name: str, revision: str, request: Request, caller: Caller, state: State
) -> dict[str, Any]:
    """Every file ``regular`` (see the module doc); unsafe paths and non-version revisions
    are refused here, before any byte is sent."""
    await run_in_threadpool(require_writable, state, caller, namespace, name)
    commits.check_revision(revision)
    files = (await read_small_json(request)).get("files")
    if not isinstance(files, list) or len(files) > MAX_FILES:
        raise BadRequest(f"preupload needs {{'files': [...]}} of at most {MAX_FILES} files")
    answer, mode = [], state.settings.hf_upload_mode
    for f in files:
        path = f.get("path") if isinstance(f, dict) else None
        if not isinstance(path, str):
            raise BadRequest("each preupload file needs a 'path'")
        safe_relative_path(path)
        answer.append({"path": path, "uploadMode": mode, "shouldIgnore": False})
    return {"files": answer}


async def _spool(request: Request, fh: IO[bytes], limit: int) -> None:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise AdapterInvalid("file_too_large", f"the commit is over {limit} bytes")
        fh.write(chunk)


def _place_inline(value: dict[str, Any], path: str, target: Path) -> int:
    if value.get("encoding", "base64") != "base64":
        raise BadRequest(f"{path!r}: only base64 file content is accepted")
    try:
        data = base64.b64decode(value.get("content", ""), validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise BadRequest(f"{path!r}: content is not base64") from None
    target.write_bytes(data)
    return len(data)


def _place_lfs(blobs: BlobStore, value: dict[str, Any], target: Path) -> int:
    """The blob an ``lfsFile`` line names (uploaded through ``routes_hf_lfs``), verified."""
    oid = lfs.check_oid(value.get("oid"))
    if not blobs.exists(blob_key(oid)):
        raise BadRequest(f"LFS object {oid} was never uploaded", code="lfs_object_missing")
    blobs.download(blob_key(oid), target, oid)
    return target.stat().st_size


def _place(body: Path, dest: Path, max_bytes: int, blobs: BlobStore) -> None:
    """Write the commit's files under ``dest`` (see ``store.hf.commits`` for what is refused)."""
    seen: set[str] = set()
    total = 0
    with body.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (ValueError, KeyError, TypeError):
                raise BadRequest(f"commit line {number} is not {{'key', 'value'}} JSON") from None
            if key == "header":
                continue
            if key in ("deletedFile", "deletedFolder", "copyFile"):
                raise BadRequest(
                    f"{key} refused: a commit creates a new, immutable version",
                    code="immutable_version",
                )
            if key not in ("file", "lfsFile") or not isinstance(value, dict):
                raise BadRequest(f"commit line {number}: unknown operation {key!r}")
            path = value.get("path")
            if not isinstance(path, str):
                raise BadRequest(f"commit line {number}: a file needs a 'path'")
            rel = safe_relative_path(path)
            if str(rel) in seen:
                raise BadRequest(f"{path!r} appears twice in the commit", code="duplicate_path")
            seen.add(str(rel))
            if len(seen) > MAX_FILES:
                raise BadRequest(f"a commit holds at most {MAX_FILES} files")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if key == "lfsFile":
                total += _place_lfs(blobs, value, target)
            else:
                total += _place_inline(value, path, target)
            if total > max_bytes:
                raise AdapterInvalid("file_too_large", f"the adapter is over {max_bytes} bytes")
    if not seen:
        raise BadRequest("the commit adds no file", code="missing_file")


def _register(
    state: AppState, caller: Principal, namespace: str, name: str, revision: str, source: Path
) -> tuple[Revision, bool]:
    with session_scope(state.engine) as session:
        return commits.commit_adapter(
            session,
            state.blobs,
            caller,
            namespace=namespace,
            name=name,
            revision=revision,
            source=source,
            limits=ValidationLimits.from_settings(state.settings),
        )


@router.post("/api/models/{namespace}/{name}/commit/{revision}")
async def create_commit(
    namespace: str, name: str, revision: str, request: Request, caller: Caller, state: State
) -> dict[str, Any]:
    """``create_commit``: the ndjson ``header`` + ``file`` lines register
    ``namespace/name@revision`` (``store.hf.commits``); the answer's ``commitOid`` is its
    commit id."""
    target = f"{namespace}/{name}@{revision}"
    with audited(request, caller, "adapter.upload", namespace=namespace, target=target) as where:
        await run_in_threadpool(require_writable, state, caller, namespace, name)
        commits.check_revision(revision)
        tmp_root = Path(state.settings.home) / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="hf-commit-", dir=tmp_root))
        try:
            limit = state.settings.max_adapter_bytes * 4 // 3 + (1 << 20)  # base64 + JSON
            with (staging / "body.ndjson").open("wb") as fh:
                await _spool(request, fh, limit)
            source = staging / "adapter"
            source.mkdir()
            max_bytes = state.settings.max_adapter_bytes
            body = staging / "body.ndjson"
            await run_in_threadpool(_place, body, source, max_bytes, state.blobs)
            found, created = await run_in_threadpool(
                _register, state, caller, namespace, name, revision, source
            )
        finally:
            await run_in_threadpool(shutil.rmtree, staging, True)
        where["target"] = found.version.id
    log.info("hf.committed", adapter=target, adapter_id=found.version.id, created=created)
    state.metrics.uploads.labels("created" if created else "unchanged").inc()
    return {
        "success": True,
        "commitOid": found.commit_id,
        "commitUrl": f"{endpoint_url(request)}/models/{namespace}/{name}/commit/{found.commit_id}",
        "pullRequestUrl": None,
    }
