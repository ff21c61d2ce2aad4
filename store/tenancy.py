"""Tenancy: namespaces (approval policy, quotas) and the base models adapters target.

The write side of both; look-ups (``get_namespace``, ``list_namespaces``,
``get_base_model_spec``, ...) are in ``store.catalog``, what a quota counts is in
``store.quotas``. Like the registry's, nothing here commits: the caller's unit of work does.
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from events.models import NAME_RULE, NAMESPACE_PART
from store.approval import parse_policy
from store.catalog import base_model_spec, get_namespace
from store.db import savepoint
from store.errors import AlreadyExists, BadRequest
from store.governance import check_namespace_settings
from store.models import BaseModelRecord, Namespace
from store.quotas import check_quota_value

__all__ = ["NAMESPACE_FIELDS", "create_namespace", "register_base_model", "update_namespace"]

log = structlog.get_logger(__name__)

NAMESPACE_FIELDS = (
    "approval_policy",
    "max_bytes",
    "max_versions",
    "description",
    "require_distinct_approver",
)


def create_namespace(
    session: Session,
    name: str,
    *,
    approval_policy: str = "manual",
    max_bytes: int | None = None,
    max_versions: int | None = None,
    actor: str,
    description: str | None = None,
    require_distinct_approver: bool = False,
) -> Namespace:
    """Create namespace ``name`` (``manual`` approval unless told otherwise: nothing it
    receives is served before someone approves it); ``AlreadyExists`` if taken,
    ``BadRequest`` if malformed."""
    if not re.fullmatch(NAMESPACE_PART, name):
        raise BadRequest(f"invalid namespace name {name!r}: 1 to 63 {NAME_RULE}")
    parse_policy(approval_policy)
    check_namespace_settings(approval_policy, require_distinct_approver)
    check_quota_value(max_bytes, "max_bytes")
    check_quota_value(max_versions, "max_versions")
    if session.get(Namespace, name) is not None:
        raise AlreadyExists(f"namespace {name!r} already exists")
    ns = Namespace(
        name=name,
        approval_policy=approval_policy,
        max_bytes=max_bytes,
        max_versions=max_versions,
        description=description,
        require_distinct_approver=require_distinct_approver,
        created_by=actor,
    )
    try:
        with savepoint(session):  # a lost race rolls back this insert only
            session.add(ns)
    except IntegrityError:
        raise AlreadyExists(f"namespace {name!r} already exists") from None
    log.info("namespace.created", namespace=name, policy=approval_policy, actor=actor)
    return ns


def update_namespace(session: Session, name: str, *, actor: str, **changes: Any) -> Namespace:
    """Change a namespace's policy, quotas or description. A stricter quota does not remove
    versions already stored; a policy change applies to versions validated afterwards.

    ``NotFound`` for a missing namespace comes first, before any change is judged; then
    ``BadRequest`` for an unknown field, a null or unknown policy, or a bad quota (None
    clears a quota or the description)."""
    ns = get_namespace(session, name)
    unknown = set(changes) - set(NAMESPACE_FIELDS)
    if unknown:
        raise BadRequest(
            f"cannot change {sorted(unknown)} of a namespace; changeable: {list(NAMESPACE_FIELDS)}"
        )
    if "approval_policy" in changes:
        if changes["approval_policy"] is None:
            raise BadRequest("approval_policy cannot be null: give auto or manual")
        parse_policy(changes["approval_policy"])
    for key in ("max_bytes", "max_versions"):
        if key in changes:
            check_quota_value(changes[key], key)
    if changes.get("require_distinct_approver", False) is None:
        raise BadRequest("require_distinct_approver cannot be null: give true or false")
    check_namespace_settings(
        changes.get("approval_policy", ns.approval_policy),
        changes.get("require_distinct_approver", ns.require_distinct_approver),
    )
    for key, value in changes.items():
        setattr(ns, key, value)
    session.flush()
    log.info("namespace.updated", namespace=name, changes=sorted(changes), actor=actor)
    return ns


def register_base_model(
    session: Session, name: str, hf_config: dict[str, Any], *, actor: str
) -> BaseModelRecord:
    """Register base model ``name`` from its HF ``config.json``. Idempotent for the same
    dimensions; ``AlreadyExists`` if ``name`` is registered with other dimensions;
    ``AdapterInvalid("invalid_base_model")`` if the config is unusable."""
    from store.formats.spec import BaseModelSpec

    if not name or len(name) > 256:
        raise BadRequest("base model name must be 1 to 256 characters")
    spec = BaseModelSpec.from_hf_config(hf_config)
    existing = session.get(BaseModelRecord, name)
    if existing is not None:
        if base_model_spec(existing) == spec:
            return existing
        raise AlreadyExists(f"base model {name!r} is already registered with other dimensions")
    row = BaseModelRecord(name=name, config=hf_config, created_by=actor, **spec.to_dict())
    session.add(row)
    session.flush()
    log.info("base_model.registered", base_model=name, actor=actor)
    return row
