"""Edits to an adapter version's descriptive metadata (``description``, ``custom_fields``):
who edited and when, never its content, provenance, status or the fleet generation.

Like ``store.registry`` it flushes inside the caller's transaction and never commits.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from sqlmodel import Session

from store import catalog
from store.errors import BadRequest
from store.models import AdapterVersion, utcnow

__all__ = ["update_adapter_metadata"]

log = structlog.get_logger(__name__)

# Sentinel for "argument not given", so that None can mean "clear this field".
_UNSET: Any = object()


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
    fields must be a JSON object); ``NotFound`` for an unknown id.
    """
    if description is _UNSET and custom_fields is _UNSET:
        raise BadRequest("nothing to change: give description and/or custom_fields")
    if description is not _UNSET and description is not None and not isinstance(description, str):
        raise BadRequest(f"description must be a string or null, got {type(description).__name__}")
    if custom_fields is not _UNSET and custom_fields is not None:
        if not isinstance(custom_fields, dict):
            raise BadRequest("custom_fields must be a JSON object or null")
        try:
            json.dumps(custom_fields, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"custom_fields must be JSON-serializable: {exc}") from None
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
