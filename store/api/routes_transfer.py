"""Adapter bytes in and out: the upload (``POST /v1/adapters``), the check an upload passes
before any byte is sent (``GET /v1/adapters/upload-check``) and file downloads
(``GET /v1/adapters/{adapter_id}/files/{path}``).

Included before ``routes_adapters``: ``upload-check`` would otherwise be taken for an id."""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from events.models import (
    NAME_PATTERN,
    NAMESPACE_PATTERN,
    VERSION_MAX_LENGTH,
    VERSION_PATTERN,
    VERSION_RULE,
    parse_coordinates,
)
from store import catalog, registry
from store.api.deps import AppState, Caller, State, audited
from store.api.errors import error_responses
from store.api.routes_adapters import VERSION_SCHEMA, adapter_entity, get_version, visible_adapter
from store.api.routes_aliases import aliases_of_files
from store.api.schemas.adapters import AdapterOut, UploadCheckOut
from store.api.schemas.text import check_form_fields, check_provenance_text
from store.api.uploads import StagedUpload, place_files, receive_upload
from store.approval import Status
from store.auth import Principal
from store.db import session_scope
from store.errors import BadRequest, LorafleetError, NotFound
from store.formats.spec import ValidationLimits
from store.models import Provenance

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/v1/adapters", responses=error_responses(401))
REQUIRED_FIELDS = ("namespace", "name", "version", "base_model")


def _provenance(upload: StagedUpload) -> Provenance:
    raw = upload.json_field("provenance", dict) or {}
    unknown = set(raw) - {"job_id", "dataset", "hyperparameters", "metrics", "custom_fields"}
    if unknown:
        raise BadRequest(f"unknown provenance keys {sorted(unknown)}")
    for key in ("hyperparameters", "metrics", "custom_fields"):
        if not isinstance(raw.get(key, {}), dict):
            raise BadRequest(f"provenance.{key} must be a JSON object")
    custom = raw.get("custom_fields") or upload.json_field("custom_fields", dict) or {}
    check_provenance_text({**raw, "custom_fields": custom})
    return Provenance(
        job_id=None if raw.get("job_id") is None else str(raw["job_id"]),
        dataset=None if raw.get("dataset") is None else str(raw["dataset"]),
        hyperparameters=raw.get("hyperparameters") or {},
        metrics=raw.get("metrics") or {},
        custom_fields=custom,
    )


_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["namespace", "name", "version", "base_model", "files"],
                "properties": {
                    "namespace": {"type": "string", "pattern": NAMESPACE_PATTERN},
                    "name": {"type": "string", "pattern": NAME_PATTERN},
                    "version": {
                        "type": "string",
                        "pattern": VERSION_PATTERN,
                        "maxLength": VERSION_MAX_LENGTH,
                        "description": VERSION_RULE,
                    },
                    "base_model": {"type": "string"},
                    "provenance": {
                        "type": "string",
                        "description": "JSON: job_id, dataset, hyperparameters, metrics",
                    },
                    "description": {"type": "string"},
                    "paths": {"type": "string", "description": "JSON list, one per file part"},
                    "files": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "filename = path relative to the adapter directory",
                    },
                },
            }
        }
    },
}


@router.post(
    "",
    status_code=201,
    response_model=AdapterOut,
    openapi_extra={"requestBody": _UPLOAD_BODY},
    responses={
        200: {
            "description": "The same bytes were already registered: the existing version.",
            "model": AdapterOut,
        },
        **error_responses(400, 403, 404, 409, 413, 422, 503),
    },
)
async def upload_adapter(
    request: Request, response: Response, caller: Caller, state: State
) -> dict[str, Any]:
    """Upload an adapter directory (multipart) as ``namespace/name@version``.

    201 with the new version (``ready`` or ``pending`` per the namespace policy); 200 with
    the existing one for the same bytes; 409 ``version_conflict`` for different bytes; 422
    with the ``AdapterInvalid`` code for a broken adapter. Nothing is kept on failure.
    """
    tmp_root = Path(state.settings.home) / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="upload-", dir=tmp_root))
    with audited(request, caller, "adapter.upload") as where:
        try:
            started = time.perf_counter()
            upload = await receive_upload(
                request, staging / "parts", max_total_bytes=state.settings.max_adapter_bytes
            )
            received = time.perf_counter()
            check_form_fields(upload.fields)
            missing = [f for f in REQUIRED_FIELDS if not upload.fields.get(f, "").strip()]
            if missing:
                raise BadRequest(f"missing form fields: {', '.join(missing)}")
            meta = {f: upload.fields[f].strip() for f in REQUIRED_FIELDS}
            where["namespace"] = meta["namespace"]
            where["target"] = f"{meta['namespace']}/{meta['name']}@{meta['version']}"
            caller.require_role(
                meta["namespace"], "writer", f"namespace {meta['namespace']!r} not found"
            )
            provenance = _provenance(upload)
            source = staging / "adapter"
            place_files(upload, source)
            entity, created = await run_in_threadpool(
                _register, state, caller, meta, source, provenance, upload.fields.get("description")
            )
        except LorafleetError as exc:
            state.metrics.uploads.labels(exc.code).inc()
            raise
        finally:
            await run_in_threadpool(shutil.rmtree, staging, True)
        log.info(
            "adapter.uploaded",
            adapter_id=entity["id"],
            adapter=entity["coordinates"],
            created=created,
            bytes=upload.total_bytes,
            receive_s=round(received - started, 3),
            register_s=round(time.perf_counter() - received, 3),
        )
        state.metrics.uploads.labels("created" if created else "unchanged").inc()
        state.metrics.upload_bytes.inc(upload.total_bytes)
        where["target"] = entity["id"]
    if not created:
        response.status_code = 200
    return entity


def _register(
    state: AppState,
    caller: Principal,
    meta: dict[str, str],
    source: Path,
    provenance: Provenance,
    description: str | None,
) -> tuple[dict[str, Any], bool]:
    with session_scope(state.engine) as session:
        version, created = registry.register_adapter(
            session,
            state.blobs,
            source_dir=source,
            provenance=provenance,
            actor=caller.actor,
            limits=ValidationLimits.from_settings(state.settings),
            description=description or None,
            **meta,
        )
        return adapter_entity(session, version), created


@router.get(
    "/{adapter_id}/files/{path:path}",
    response_model=None,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "The file's bytes; ``X-Lorafleet-Role`` says which role was sent.",
        },
        **error_responses(400, 404, 503),
    },
)
def download_file(
    adapter_id: str,
    path: str,
    request: Request,
    caller: Caller,
    state: State,
    role: Annotated[
        Literal["canonical", "original"] | None,
        Query(
            description="Which file at ``path``: ``canonical`` (the HF PEFT files engines "
            "load; the default) or ``original`` (the bytes as uploaded). An upload and its "
            "canonical form often share a path (``adapter_config.json``)."
        ),
    ] = None,
    canonical: Annotated[
        bool | None,
        Query(deprecated=True, description="Older spelling: ``false`` is ``role=original``."),
    ] = None,
) -> StreamingResponse | dict[str, Any]:
    """Stream one file of a version from the blob store; ``ETag`` is its sha256. An adapter
    may hold two files at one path (the uploaded original and the canonical HF PEFT one):
    ``role`` picks, canonical by default; 404 when the version has no file of that role there.

    ``/v1/adapters/{namespace}/files/{version}`` (an adapter *named* ``files``) also lands
    here; anything that is not an adapter id is answered as those coordinates, and
    ``.../files/aliases[/...]`` as that adapter's aliases (``routes_aliases``)."""
    if not adapter_id.startswith("ad_") and path.split("/", 1)[0] == "aliases":
        return aliases_of_files(adapter_id, path, caller, state)
    if not adapter_id.startswith("ad_") and "/" not in path:
        return get_version(adapter_id, "files", path, caller, state)  # type: ignore[return-value]
    if canonical is not None:
        legacy = "canonical" if canonical else "original"
        if role is not None and role != legacy:
            raise BadRequest(f"role={role} contradicts canonical={str(canonical).lower()}")
        role = legacy
    with audited(request, caller, "adapter.download", target=f"{adapter_id}/{path}") as where:
        with session_scope(state.engine) as session:
            version = visible_adapter(session, caller, adapter_id)
            where["namespace"] = version.namespace
            files = catalog.list_files(session, adapter_id, role)
        matches = [f for f in files if f.path == path]
        if not matches:
            which = f"{role} file" if role else "file"
            raise NotFound(f"adapter {adapter_id} has no {which} {path!r}")
        chosen = next((f for f in matches if f.role == "canonical"), matches[0])
        where["target"] = f"{adapter_id}/{chosen.role}/{path}"
        chunks = state.blobs.iter_chunks(chosen.blob_key)
        # Pull the first chunk here so a missing blob is a clean error, not a cut-off 200.
        first = next(chunks, b"")
    state.metrics.downloads.inc()
    state.metrics.download_bytes.inc(chosen.size)
    headers = {
        "ETag": f'"{chosen.sha256}"',
        "Content-Length": str(chosen.size),
        "X-Lorafleet-Role": chosen.role,
    }
    return StreamingResponse(
        itertools.chain((first,), chunks),
        media_type="application/octet-stream",
        headers=headers,
    )


# Before ``routes_adapters``' ``/{adapter_id}``, which would take ``upload-check`` for an id.
@router.get(
    "/upload-check", response_model=UploadCheckOut, responses=error_responses(400, 403, 404, 422)
)
def check_upload(
    namespace: str,
    name: str,
    version: Annotated[str, Query(description=VERSION_RULE, json_schema_extra=VERSION_SCHEMA)],
    base_model: str,
    caller: Caller,
    state: State,
) -> dict[str, Any]:
    """What ``POST /v1/adapters`` would refuse before looking at any file, answered with the
    same error: a token that may not write the namespace (403, or 404 when it cannot see it),
    malformed coordinates (400), a missing namespace (404), an unregistered base model (422
    ``unknown_base_model``). Clients ask first, so nothing is sent to be refused."""
    caller.require_role(namespace, "writer", f"namespace {namespace!r} not found")
    coordinates = f"{namespace}/{name}@{version}"
    try:
        parse_coordinates(coordinates)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    with session_scope(state.engine) as session:
        ns = catalog.get_namespace(session, namespace)
        catalog.get_base_model_spec(session, base_model)
        try:  # a failed version is replaced by the next upload, as if absent
            exists = catalog.get_version(session, namespace, name, version).status != Status.FAILED
        except NotFound:
            exists = False
        return {
            "object": "upload_check",
            "coordinates": coordinates,
            "base_model": base_model,
            "approval_policy": ns.approval_policy,
            "exists": exists,
        }
