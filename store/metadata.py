"""Edits to an adapter version's descriptive metadata (``description``, ``custom_fields``):
who edited and when, never its content, provenance, status or the fleet generation.

Like ``store.registry`` it flushes inside the caller's transaction and never commits.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from sqlmodel import Session

from events.untrusted import STORED_JSON, UntrustedJson, check_json_value
from store import catalog
from store.errors import BadRequest
from store.models import AdapterVersion, utcnow

__all__ = ["MAX_STORED_JSON_BYTES", "check_stored_json", "update_adapter_metadata"]

# The upload's form-field cap (store.api.uploads.MAX_FIELD_BYTES): a value PATCH may store
# is no bigger than one an upload may.
MAX_STORED_JSON_BYTES = 1 << 20

log = structlog.get_logger(__name__)

# Sentinel for "argument not given", so that None can mean "clear this field".
_UNSET: Any = object()


def check_stored_json(value: Any, what: str) -> None:
    """``BadRequest`` unless ``value`` is plain JSON every read route can serve back: within
    ``events.untrusted.STORED_JSON`` (depth, items, integer size, finite floats, no control
    characters) and at most ``MAX_STORED_JSON_BYTES`` once serialized."""
    try:
        check_json_value(value, STORED_JSON, what=what)
    except UntrustedJson as exc:
        raise BadRequest(str(exc)) from None
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_STORED_JSON_BYTES:
        raise BadRequest(f"{what} is {size} bytes as JSON, above {MAX_STORED_JSON_BYTES}")


def update_adapter_metadata(
    session: Session,
    adapter_id: str,
    *,
    actor: str,
    description: str | None = _UNSET,
    custom_fields: dict[str, Any] | None = _UNSET,
) -> AdapterVersion:
    """Edit a version's descriptive metadata: ``description`` and/or ``custom_fields``
    (None clears a field; an argument not given is left as it is). Records ``actor`` and
    the time as ``updated_by``/``updated_at``.

    Never touches content, provenance, status or the fleet generation: no outbox row, no
    refresh. ``BadRequest`` when nothing is given or a value has the wrong type (custom
    fields must be a JSON object within ``check_stored_json``'s bounds, the same as an
    upload's); ``NotFound`` for an unknown id.
    """
    if description is _UNSET and custom_fields is _UNSET:
        raise BadRequest("nothing to change: give description and/or custom_fields")
    if description is not _UNSET and description is not None and not isinstance(description, str):
        raise BadRequest(f"description must be a string or null, got {type(description).__name__}")
    if custom_fields is not _UNSET and custom_fields is not None:
        if not isinstance(custom_fields, dict):
            raise BadRequest("custom_fields must be a JSON object or null")
        check_stored_json(custom_fields, "custom_fields")
    version = catalog.get_adapter(session, adapter_id)
    # Lock the row so a concurrent edit cannot interleave with this one (PostgreSQL).
    session.refresh(version, with_for_update=True)
    changed = []
    if description is not _UNSET:
        version.description = description
        changed.append("description")
    if custom_fields is not _UNSET:
        version.custom_fields = None if custom_fields is None else dict(custom_fields)
        changed.append("custom_fields")
    version.updated_at, version.updated_by = utcnow(), actor
    session.flush()
    log.info("adapter.metadata_updated", adapter_id=adapter_id, fields=changed, actor=actor)
    return version
