"""The registry service for adapter versions: register, commit, fail, transition, purge.
The API and the Celery tasks both call these functions; they take the session and
blob store as arguments and own nothing else.

Transactions: nothing here commits. Each function writes and flushes inside the caller's
transaction; the unit of work around it (``store.db.session_scope``, or the route's or
task's one ``session.commit()``) commits, or rolls back on any error.

Immutability: ``namespace/name@version`` with the same ``content_sha256`` is an idempotent
no-op; with other bytes it is ``VersionConflict``. A ``failed`` version does not hold its
coordinates: registering fixed bytes under them replaces the failed row (new id).

The neighbours own the rest, and callers import from them: ``store.catalog`` (reads),
``store.tenancy`` (namespaces, base models), ``store.packaging`` (files to blobs),
``store.approval`` (the status machine), ``store.outbox`` (events, the fleet generation),
``store.metadata`` (descriptive edits), ``store.quotas``, ``store.audit`` (the access log)
and ``store.blobs`` (blob GC).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from events.models import parse_coordinates
from store import aliases, catalog, governance, packaging, quotas
from store import evaluation as evaluation_gate
from store.approval import (
    Status,
    apply_transition,
    check_transition,
    parse_status,
    statuses_after_validation,
)
from store.db import savepoint
from store.errors import AdapterInvalid, BadRequest, IllegalTransition, VersionConflict
from store.models import (
    AdapterFile,
    AdapterVersion,
    BaseModelRecord,
    Package,
    Provenance,
    new_adapter_id,
    utcnow,
)
from store.outbox import announce_refresh, announce_status

if TYPE_CHECKING:
    from store.blobs import BlobStore
    from store.formats.spec import ValidationLimits

__all__ = [
    "approve",
    "archive",
    "commit_version",
    "purge",
    "record_failure",
    "register_adapter",
    "reject",
    "transition",
]

log = structlog.get_logger(__name__)


def _check_coordinates(namespace: str, name: str, version: str) -> None:
    try:
        parse_coordinates(f"{namespace}/{name}@{version}")
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


# --- versions ---------------------------------------------------------------------------


def _find(session: Session, namespace: str, name: str, version: str) -> AdapterVersion | None:
    return session.execute(
        sa.select(AdapterVersion)
        .where(
            AdapterVersion.namespace == namespace,
            AdapterVersion.name == name,
            AdapterVersion.version == version,
        )
        .with_for_update()
    ).scalar_one_or_none()


def _delete_version(session: Session, version: AdapterVersion) -> None:
    session.execute(sa.delete(AdapterFile).where(AdapterFile.adapter_id == version.id))
    session.delete(version)
    session.flush()


def _existing_outcome(existing: AdapterVersion, package: Package, base_model: str) -> None:
    """Raise ``VersionConflict`` unless ``existing`` is the same bytes on the same base."""
    if existing.content_sha256 != package.content_sha256:
        raise VersionConflict(
            f"{existing.coordinates} already exists with different content "
            f"(sha256 {existing.content_sha256}); versions are immutable, publish a new version"
        )
    if existing.base_model != base_model:
        raise VersionConflict(
            f"{existing.coordinates} is already registered against base model "
            f"{existing.base_model!r}, not {base_model!r}"
        )


def _validating_row(
    *,
    namespace: str,
    name: str,
    version: str,
    base_model: str,
    provenance: Provenance,
    actor: str,
    **fields: Any,
) -> AdapterVersion:
    """A new, unsaved ``validating`` version at these coordinates carrying ``provenance``;
    ``fields`` set the rest (format, rank, digests, ... of an accepted package)."""
    return AdapterVersion(
        id=new_adapter_id(),
        namespace=namespace,
        name=name,
        version=version,
        base_model=base_model,
        job_id=provenance.job_id,
        dataset=provenance.dataset,
        hyperparameters=dict(provenance.hyperparameters),
        metrics=dict(provenance.metrics),
        custom_fields=dict(provenance.custom_fields),
        status=Status.VALIDATING.value,
        created_by=actor,
        updated_by=actor,
        **fields,
    )


def commit_version(
    session: Session,
    package: Package,
    *,
    namespace: str,
    name: str,
    version: str,
    base_model: str,
    provenance: Provenance,
    actor: str,
    description: str | None = None,
    evaluation: dict[str, Any] | None = None,
) -> tuple[AdapterVersion, bool]:
    """Record ``package`` as ``namespace/name@version``; returns (version, created).

    Same coordinates and bytes: the existing version, ``created=False``. Other bytes:
    ``VersionConflict``. A ``failed`` version at the coordinates is replaced. Checks the
    namespace quota (``QuotaExceeded``) and that the base model is registered. The new row
    ends ``pending`` (manual namespace) or ``ready`` (auto, with its ``FleetRefresh`` outbox
    row written in the same transaction). A namespace with an evaluation policy gates that on
    ``evaluation`` (the ``evaluate`` step's result, stored with the new version):
    ``store.evaluation.statuses_after_evaluation``.
    """
    _check_coordinates(namespace, name, version)
    for attempt in range(2):
        ns = quotas.lock_namespace(session, namespace)
        if session.get(BaseModelRecord, base_model) is None:
            raise AdapterInvalid(
                "unknown_base_model", f"base model {base_model!r} is not registered"
            )
        existing = _find(session, namespace, name, version)
        if existing is not None and existing.status != Status.FAILED:
            _existing_outcome(existing, package, base_model)
            return existing, False  # nothing changed
        quotas.enforce_quota(session, ns, package.files)
        if existing is not None:
            log.info(
                "adapter.replacing_failed", adapter_id=existing.id, coordinates=existing.coordinates
            )
            _delete_version(session, existing)
        row = _validating_row(
            namespace=namespace,
            name=name,
            version=version,
            base_model=base_model,
            provenance=provenance,
            actor=actor,
            format=package.source_format,
            rank=package.rank,
            alpha=package.alpha,
            target_modules=list(package.target_modules),
            description=description,
            content_sha256=package.content_sha256,
            manifest_sha256=package.manifest_sha256,
            manifest=package.manifest,
            total_bytes=package.total_bytes,
        )
        try:
            with savepoint(session):
                session.add(row)
        except IntegrityError:
            # A concurrent registration of the same coordinates won; judge against it.
            # Only the savepoint is rolled back: the caller's transaction goes on.
            if attempt == 0:
                continue
            raise
        session.add_all(
            AdapterFile(
                adapter_id=row.id,
                path=f.path,
                role=f.role,
                sha256=f.sha256,
                size=f.size,
                blob_key=f.blob_key,
            )
            for f in package.files
        )
        if evaluation is not None:
            evaluation_gate.record_evaluation(session, row, evaluation)
        has_policy = evaluation_gate.get_policy(session, namespace) is not None
        path, code, gate_reason = evaluation_gate.statuses_after_evaluation(
            ns.approval_policy, has_policy, evaluation
        )
        for status in path:
            reason = "auto-approved" if status == Status.READY else "validated"
            last = status == path[-1]
            reason = (gate_reason or reason) if last else reason
            apply_transition(
                session, row, status, actor=actor, reason=reason, code=code if last else None
            )
        log.info(
            "adapter.registered",
            adapter_id=row.id,
            adapter=row.coordinates,
            status=row.status,
            generation=row.generation,
            actor=actor,
        )
        return row, True
    raise AssertionError("unreachable")  # pragma: no cover


def register_adapter(
    session: Session,
    blobs: BlobStore,
    *,
    namespace: str,
    name: str,
    version: str,
    base_model: str,
    source_dir: Path,
    provenance: Provenance,
    actor: str,
    limits: ValidationLimits,
    description: str | None = None,
) -> tuple[AdapterVersion, bool]:
    """``prepare_package`` + ``commit_version``: validate, store blobs, record the version."""
    _check_coordinates(namespace, name, version)
    catalog.get_namespace(session, namespace)
    spec = catalog.get_base_model_spec(session, base_model)
    package = packaging.prepare_package(blobs, source_dir, spec, limits)
    return commit_version(
        session,
        package,
        namespace=namespace,
        name=name,
        version=version,
        base_model=base_model,
        provenance=provenance,
        actor=actor,
        description=description,
    )


def record_failure(
    session: Session,
    *,
    namespace: str,
    name: str,
    version: str,
    base_model: str,
    code: str,
    message: str,
    provenance: Provenance,
    actor: str,
) -> AdapterVersion:
    """Record that the files for ``namespace/name@version`` were rejected: a ``failed`` row
    with ``status_code=code`` and the reason. Idempotent (a second failure updates the
    reason); ``VersionConflict`` if a valid version already holds the coordinates."""
    _check_coordinates(namespace, name, version)
    catalog.get_namespace(session, namespace)
    existing = _find(session, namespace, name, version)
    if existing is not None:
        if existing.status != Status.FAILED:
            raise VersionConflict(
                f"{existing.coordinates} is already registered ({existing.status}); "
                f"a failed upload cannot replace it"
            )
        existing.status_code, existing.status_reason = code, message
        existing.updated_at, existing.updated_by = utcnow(), actor
        session.flush()
        return existing
    row = _validating_row(
        namespace=namespace,
        name=name,
        version=version,
        base_model=base_model,
        provenance=provenance,
        actor=actor,
    )
    session.add(row)
    session.flush()
    apply_transition(session, row, Status.FAILED, actor=actor, reason=message, code=code)
    log.warning("adapter.failed", adapter_id=row.id, adapter=row.coordinates, code=code)
    return row


def transition(
    session: Session,
    adapter_id: str,
    to_status: str,
    *,
    actor: str,
    reason: str | None = None,
    drop_from_aliases: bool = False,
) -> AdapterVersion:
    """Move adapter ``adapter_id`` to ``to_status`` with a compare-and-set.

    ``IllegalTransition`` (409) for an edge the machine lacks or a lost race. From
    ``validating``, the namespace policy decides: ``auto`` goes on through ``pending`` to
    ``ready`` in this transaction; ``manual`` stops at ``pending`` and refuses ``ready``.
    Out of ``ready``, a version an alias routes to is ``AliasTargetConflict`` (409
    ``alias_target``) unless ``drop_from_aliases`` (``store.aliases.release_version``).
    """
    target = parse_status(to_status)
    version = catalog.get_adapter(session, adapter_id)
    if version.status == Status.READY and target != Status.READY:
        check_transition(version.status, target)
        aliases.release_version(session, version, drop=drop_from_aliases, actor=actor)
    if version.status == Status.ARCHIVED and target == Status.READY:
        raise IllegalTransition(
            f"{version.coordinates} is archived: restore it (POST /v1/adapters/{adapter_id}"
            f"/restore, a namespace admin) instead of changing its status"
        )
    if version.status == Status.PENDING and target == Status.READY:
        governance.check_distinct_approver(session, version, actor)
    if version.status == Status.VALIDATING and target in (Status.PENDING, Status.READY):
        policy = catalog.get_namespace(session, version.namespace).approval_policy
        path = statuses_after_validation(policy)
        if target not in path:
            raise IllegalTransition(
                f"namespace {version.namespace!r} needs manual approval: "
                f"a validated adapter goes to pending first"
            )
    else:
        path = (target,)
    for status in path:
        apply_transition(session, version, status, actor=actor, reason=reason)
    log.info("adapter.transitioned", adapter_id=adapter_id, status=version.status, actor=actor)
    return version


def approve(
    session: Session, adapter_id: str, *, actor: str, reason: str | None = None
) -> AdapterVersion:
    """``pending -> ready``: engines of the base model will load it."""
    return transition(session, adapter_id, Status.READY, actor=actor, reason=reason)


def reject(
    session: Session, adapter_id: str, *, actor: str, reason: str | None = None
) -> AdapterVersion:
    """``pending -> rejected``: never served."""
    return transition(session, adapter_id, Status.REJECTED, actor=actor, reason=reason)


def archive(
    session: Session,
    adapter_id: str,
    *,
    actor: str,
    reason: str | None = None,
    drop_from_aliases: bool = False,
) -> AdapterVersion:
    """``ready -> archived``: engines evict it (see ``transition`` for aliases)."""
    return transition(
        session,
        adapter_id,
        Status.ARCHIVED,
        actor=actor,
        reason=reason,
        drop_from_aliases=drop_from_aliases,
    )


def purge(
    session: Session, adapter_id: str, *, actor: str, drop_from_aliases: bool = False
) -> None:
    """Delete a version and its file rows. A ready version is evicted in the same
    transaction (generation bump + ``FleetRefresh``); one an alias routes to is
    ``AliasTargetConflict`` unless ``drop_from_aliases``. Blobs are left to the GC, which
    removes them once nothing references them."""
    version = catalog.get_adapter(session, adapter_id)
    status = version.status
    if status == Status.READY:
        aliases.release_version(session, version, drop=drop_from_aliases, actor=actor)
        announce_refresh(session, version, "evict")
    announce_status(session, version, status, "deleted", actor=actor)
    session.execute(sa.delete(AdapterFile).where(AdapterFile.adapter_id == adapter_id))
    deleted = session.execute(
        sa.delete(AdapterVersion)
        .where(AdapterVersion.id == adapter_id, AdapterVersion.status == status)
        .execution_options(synchronize_session=False)
    )
    if deleted.rowcount != 1:
        raise IllegalTransition(f"adapter {adapter_id} changed concurrently; purge again")
    session.expunge(version)
    session.flush()
    log.info("adapter.purged", adapter_id=adapter_id, adapter=version.coordinates, actor=actor)
