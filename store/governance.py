"""Governance: who may approve what (four-eyes), restoring an archived version, and reading
the access log. The console and the REST API both call these; the roles are checked by the
caller (``store.auth.Principal``), the rules here.

* **Four-eyes.** A namespace with ``require_distinct_approver`` refuses ``pending -> ready``
  by the version's uploader (``SelfApproval``, 403 ``self_approval``). The uploader is the
  version's ``created_by``: the token that uploaded it, or for the pipeline's own uploads the
  actor the pipeline registered it as. The rule needs manual approval: an ``auto`` namespace
  approves its uploads itself, so the two settings together are refused (``BadRequest``).
* **Restore.** ``archived -> ready`` through the status machine: the same compare-and-set,
  a generation bump and a ``FleetRefresh`` load row in the outbox, a history row with the
  reason (required).
* **Audit.** ``list_audit`` pages the access log, newest first, filtered and limited to the
  namespaces the caller may read.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
import structlog
from sqlmodel import Session

from store import catalog
from store.approval import ApprovalPolicy, Status, apply_transition
from store.errors import BadRequest, IllegalTransition, SelfApproval
from store.models import AccessLog, AdapterVersion, Namespace

__all__ = [
    "check_distinct_approver",
    "check_namespace_settings",
    "list_audit",
    "restore",
]

log = structlog.get_logger(__name__)

MAX_AUDIT_PAGE = 200


def check_namespace_settings(approval_policy: str, require_distinct_approver: bool) -> None:
    """``BadRequest`` when four-eyes is asked of a namespace that approves automatically."""
    if require_distinct_approver and approval_policy == ApprovalPolicy.AUTO:
        raise BadRequest(
            "require_distinct_approver needs approval_policy manual: an auto namespace "
            "approves its own uploads"
        )


def check_distinct_approver(session: Session, version: AdapterVersion, actor: str) -> None:
    """``SelfApproval`` when ``version``'s namespace requires four eyes and ``actor``
    uploaded it."""
    ns = session.get(Namespace, version.namespace)
    if ns is not None and ns.require_distinct_approver and version.created_by == actor:
        raise SelfApproval(
            f"namespace {version.namespace!r} requires a distinct approver: "
            f"{actor} uploaded {version.coordinates} and may not approve it"
        )


def restore(session: Session, adapter_id: str, *, actor: str, reason: str) -> AdapterVersion:
    """``archived -> ready`` for ``adapter_id``: engines load it again (new generation, a
    ``FleetRefresh`` load in the outbox). ``BadRequest`` without a reason,
    ``IllegalTransition`` (409) unless the version is archived."""
    if not reason or not reason.strip():
        raise BadRequest("a restore needs a reason")
    version = catalog.get_adapter(session, adapter_id)
    if version.status != Status.ARCHIVED:
        raise IllegalTransition(
            f"only an archived version can be restored; {version.coordinates} is {version.status}"
        )
    apply_transition(session, version, Status.READY, actor=actor, reason=reason.strip())
    log.info("adapter.restored", adapter_id=adapter_id, generation=version.generation, actor=actor)
    return version


def list_audit(
    session: Session,
    *,
    namespaces: set[str] | None,
    namespace: str | None = None,
    adapter: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    page: int = 1,
    page_size: int = 50,
) -> tuple[list[AccessLog], int]:
    """One page of access-log rows, newest first, and the total matching.

    ``namespaces`` (None: all) limits what a scoped caller sees: rows of other namespaces
    and rows with no namespace (global actions) are a global caller's only. ``adapter``
    matches the row's target (an adapter id); ``since``/``until`` bound ``at``
    (inclusive / exclusive)."""
    if page_size < 1 or page_size > MAX_AUDIT_PAGE:
        raise BadRequest(f"page_size must be 1 to {MAX_AUDIT_PAGE}")
    query = sa.select(AccessLog)
    if namespaces is not None:
        query = query.where(AccessLog.namespace.in_(sorted(namespaces)))
    filters = (
        (namespace, AccessLog.namespace),
        (adapter, AccessLog.target),
        (actor, AccessLog.actor),
        (action, AccessLog.action),
    )
    for value, column in filters:
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(AccessLog.at >= since)
    if until is not None:
        query = query.where(AccessLog.at < until)
    total = session.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(
        query.order_by(AccessLog.at.desc(), AccessLog.id.desc())
        .offset((page - 1) * page_size)
        .limit(page_size)
    ).scalars()
    return list(rows), int(total)
