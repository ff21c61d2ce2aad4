"""Git LFS for ``/v1/hf`` uploads when ``LORAFLEET_HF_UPLOAD_MODE=lfs`` (clients with
``HF_HUB_DISABLE_XET=1``): the batch endpoint, the signed PUT (``store.hf.lfs``) that stores
a file's bytes as a blob once they hash right, and verify. A commit then names the blob
in an ``lfsFile`` line (``routes_hf_commit``)."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from store.api.deps import AppState, Caller, State
from store.api.routes_hf import HfRoute
from store.api.routes_hf_commit import endpoint_url, read_small_json, require_writable
from store.blobs import blob_key
from store.errors import AdapterInvalid, BadRequest
from store.hf import lfs
from store.hf.repos import EntryNotFound

router = APIRouter(prefix="/v1/hf", route_class=HfRoute, include_in_schema=False)

# The object PUT carries the file's raw bytes (no Content-Type from huggingface_hub): the JSON
# body bounds (store.api.body_limits) must leave it alone; the route checks size and digest.
RAW_BODY_PREFIX = "/v1/hf/api/lfs-upload/"


def _secret(state: AppState) -> str:
    if not state.admin_token:
        raise BadRequest("LFS uploads need the registry's admin token (LORAFLEET_ADMIN_TOKEN)")
    return state.admin_token


@router.post("/{namespace}/{name}.git/info/lfs/objects/batch")
async def lfs_batch(
    namespace: str, name: str, request: Request, caller: Caller, state: State
) -> dict[str, Any]:
    """Where to PUT each object the registry lacks (objects it holds get no actions)."""
    await run_in_threadpool(require_writable, state, caller, namespace, name)
    data = await read_small_json(request)
    if data.get("operation") != "upload":
        raise BadRequest("only LFS uploads are offered here; download through resolve")
    objects = data.get("objects")
    if not isinstance(objects, list) or len(objects) > 256:
        raise BadRequest("an LFS batch needs 'objects': at most 256 of them")
    secret, base = _secret(state), endpoint_url(request)
    answer = []
    for obj in objects:
        oid = lfs.check_oid(obj.get("oid") if isinstance(obj, dict) else None)
        size = obj.get("size")
        if not isinstance(size, int) or not 0 <= size <= state.settings.max_file_bytes:
            limit = state.settings.max_file_bytes
            error = {"code": 422, "message": f"size must be 0..{limit} bytes"}
            answer.append(
                {"oid": oid, "size": size if isinstance(size, int) else -1, "error": error}
            )
            continue
        entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
        if not await run_in_threadpool(state.blobs.exists, blob_key(oid)):
            query = lfs.signed_query(secret, namespace, name, oid, size)
            entry["actions"] = {
                "upload": {"href": f"{base}/api/lfs-upload/{namespace}/{name}/{oid}?{query}"},
                "verify": {"href": f"{base}/{namespace}/{name}.git/info/lfs/objects/verify"},
            }
        answer.append(entry)
    return {"transfer": "basic", "objects": answer, "hash_algo": "sha256"}


@router.put("/api/lfs-upload/{namespace}/{name}/{oid}")
async def lfs_put(
    namespace: str,
    name: str,
    oid: str,
    size: int,
    expires: int,
    sig: str,
    request: Request,
    state: State,
) -> dict[str, Any]:
    """The signed PUT: the bytes become a blob only if they are ``size`` bytes hashing to
    ``oid``; anything else is refused and nothing is kept."""
    lfs.check_signed(_secret(state), namespace, name, lfs.check_oid(oid), size, expires, sig)
    tmp_root = Path(state.settings.home) / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(prefix="hf-lfs-", dir=tmp_root) as fh:
        digest, got = hashlib.sha256(), 0
        async for chunk in request.stream():
            got += len(chunk)
            if got > size:
                raise AdapterInvalid("file_too_large", f"more than the {size} bytes announced")
            digest.update(chunk)
            fh.write(chunk)
        fh.flush()
        if got != size or digest.hexdigest() != oid:
            raise BadRequest(
                f"the bytes sent ({got}, sha256 {digest.hexdigest()}) are not {oid} ({size})",
                code="digest_mismatch",
            )
        await run_in_threadpool(state.blobs.put_file, Path(fh.name))
    return {}


@router.post("/{namespace}/{name}.git/info/lfs/objects/verify")
async def lfs_verify(
    namespace: str, name: str, request: Request, caller: Caller, state: State
) -> dict[str, Any]:
    """200 once the object is stored; ``EntryNotFound`` (404) otherwise."""
    await run_in_threadpool(require_writable, state, caller, namespace, name)
    oid = lfs.check_oid((await read_small_json(request)).get("oid"))
    if not await run_in_threadpool(state.blobs.exists, blob_key(oid)):
        raise EntryNotFound(f"LFS object {oid} was not uploaded")
    return {}
