"""Aliases and pins: the names engines route to and the versions they keep resident
(issue 13).

* **Aliases.** ``namespace/name@alias`` points at one ready version of the adapter or a
  weighted split of up to ``MAX_TARGETS`` of them (integer weights summing to 100, one base
  model). Every change (``set_alias``, ``delete_alias``, a version dropped from it) is a new
  revision kept in ``alias_revisions``, bumps the fleet generation and writes a
  ``FleetRefresh`` ``alias`` row in the outbox, in the caller's transaction, so every engine
  switches at the same generation. ``latest`` is implicit: the highest ready SemVer
  (``events.models.version_key``) of the adapter, never stored.
* **Leaving ready.** ``release_version`` is called by ``store.registry`` before a version
  leaves ``ready`` (archive, purge): a version an alias routes to is ``AliasTargetConflict``
  (409 ``alias_target``, naming the aliases) unless the caller drops it from them, which
  renormalises the other weights (an alias left with no target is deleted).

Pins, the implicit ``latest`` and what the fleet view shows of both are
``store.fleet_routing``. Like ``store.registry``, nothing here commits; it never imports
``store.catalog`` (which imports ``store.fleet_routing``), reads of versions are its own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from events.models import LATEST_ALIAS, FleetRefresh, alias_problem, is_version
from events.streams import REFRESH_STREAM
from store.db import savepoint
from store.errors import AliasTargetConflict, BadRequest, IllegalTransition, NotFound
from store.fleet_routing import READY, TOTAL_WEIGHT, implicit_latest
from store.models import AdapterVersion, Alias, AliasRevision, utcnow
from store.outbox import enqueue, next_generation

__all__ = [
    "MAX_TARGETS",
    "Target",
    "alias_history",
    "delete_alias",
    "get_alias",
    "list_aliases",
    "release_version",
    "renormalised",
    "set_alias",
]

log = structlog.get_logger(__name__)

MAX_TARGETS = 8


@dataclass(frozen=True)
class Target:
    """One arm of an alias as a caller asks for it: a version and its weight (1..100)."""

    version: str
    weight: int = TOTAL_WEIGHT


def check_alias_name(alias: str) -> None:
    """``BadRequest`` (``invalid_alias``) unless ``alias`` is a settable alias name."""
    problem = alias_problem(alias)
    if problem is not None:
        raise BadRequest(problem, code="invalid_alias")


def _bad_target(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_alias_target")


def _versions(session: Session, namespace: str, name: str) -> list[AdapterVersion]:
    return list(
        session.execute(
            sa.select(AdapterVersion).where(
                AdapterVersion.namespace == namespace, AdapterVersion.name == name
            )
        ).scalars()
    )


def _resolve_targets(
    session: Session, namespace: str, name: str, targets: list[Target]
) -> tuple[str, list[dict[str, Any]]]:
    """The base model and stored targets for ``targets``; ``invalid_alias_target`` for a
    count outside 1..8, a repeated or unknown version, one not ready, weights outside
    1..100 or not summing to 100, or versions of different base models. The target rows are
    locked (PostgreSQL) so a concurrent archive waits and then sees this alias."""
    if not 1 <= len(targets) <= MAX_TARGETS:
        raise _bad_target(f"an alias has 1 to {MAX_TARGETS} targets, got {len(targets)}")
    seen: set[str] = set()
    for t in targets:
        if not is_version(t.version):
            raise _bad_target(f"target {t.version[:80]!r} is not a semantic version")
        if t.version in seen:
            raise _bad_target(f"version {t.version} is listed twice; give each version once")
        seen.add(t.version)
        if isinstance(t.weight, bool) or not 1 <= t.weight <= TOTAL_WEIGHT:
            raise _bad_target(f"weight of {t.version} must be an integer 1..{TOTAL_WEIGHT}")
    total = sum(t.weight for t in targets)
    if total != TOTAL_WEIGHT:
        raise _bad_target(f"weights must sum to {TOTAL_WEIGHT}, got {total}")
    rows = {
        v.version: v
        for v in session.execute(
            sa.select(AdapterVersion)
            .where(
                AdapterVersion.namespace == namespace,
                AdapterVersion.name == name,
                AdapterVersion.version.in_(sorted(seen)),
            )
            .with_for_update()
        ).scalars()
    }
    stored: list[dict[str, Any]] = []
    for t in targets:
        row = rows.get(t.version)
        if row is None:
            raise _bad_target(f"{namespace}/{name}@{t.version} does not exist")
        if row.status != READY:
            raise _bad_target(
                f"{row.coordinates} is {row.status}: an alias routes to ready versions only"
            )
        stored.append({"version": t.version, "adapter_id": row.id, "weight": t.weight})
    bases = {rows[t.version].base_model for t in targets}
    if len(bases) > 1:
        raise _bad_target(
            f"targets are of different base models ({', '.join(sorted(bases))}): "
            "an alias serves one base model"
        )
    return bases.pop(), stored


def _find(session: Session, namespace: str, name: str, alias: str, *, lock: bool) -> Alias | None:
    query = sa.select(Alias).where(
        Alias.namespace == namespace, Alias.name == name, Alias.alias == alias
    )
    if lock:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def _announce(session: Session, row: Alias, action: str, *, actor: str, reason: str | None) -> None:
    """New generation on ``row``, its revision row and the ``FleetRefresh`` alias row."""
    generation = next_generation(session)
    row.generation = generation
    session.add(
        AliasRevision(
            alias_id=row.id,
            namespace=row.namespace,
            name=row.name,
            alias=row.alias,
            revision=row.revision,
            action=action,
            targets=None if action == "delete" else list(row.targets),
            pinned=row.pinned,
            actor=actor,
            reason=reason,
            generation=generation,
        )
    )
    enqueue(
        session,
        REFRESH_STREAM,
        FleetRefresh(
            action="alias",
            adapter_id=row.id,
            adapter=f"{row.namespace}/{row.name}@{row.alias}",
            base_model=row.base_model,
            manifest_sha256=None,
            generation=generation,
        ),
    )


def set_alias(
    session: Session,
    namespace: str,
    name: str,
    alias: str,
    targets: list[Target],
    *,
    actor: str,
    pinned: bool = False,
    reason: str | None = None,
) -> Alias:
    """Create or move ``namespace/name@alias`` to ``targets``. The same targets and pin
    again is a no-op (no revision, no generation). ``NotFound`` when the adapter has no
    version; ``invalid_alias`` / ``invalid_alias_target`` (400) for a bad name or targets;
    ``IllegalTransition`` (409) when a concurrent request created the same alias first."""
    check_alias_name(alias)
    if not _versions(session, namespace, name):
        raise NotFound(f"adapter {namespace}/{name} not found")
    base_model, stored = _resolve_targets(session, namespace, name, targets)
    row = _find(session, namespace, name, alias, lock=True)
    now = utcnow()
    if row is None:
        row = Alias(
            id=f"al_{uuid.uuid4().hex}",
            namespace=namespace,
            name=name,
            alias=alias,
            base_model=base_model,
            targets=stored,
            pinned=pinned,
            revision=1,
            created_at=now,
            created_by=actor,
            updated_at=now,
            updated_by=actor,
        )
        try:
            with savepoint(session):
                session.add(row)
                session.flush()
        except IntegrityError:
            raise IllegalTransition(
                f"alias {namespace}/{name}@{alias} was created concurrently; set it again"
            ) from None
    else:
        if row.targets == stored and row.pinned == pinned:
            return row
        if row.base_model != base_model:
            raise _bad_target(
                f"alias {namespace}/{name}@{alias} serves {row.base_model}, the targets "
                f"{base_model}: delete the alias first to move it to another base model"
            )
        row.targets, row.pinned = stored, pinned
        row.revision += 1
        row.updated_at, row.updated_by = now, actor
    _announce(session, row, "set", actor=actor, reason=reason)
    session.flush()
    log.info("alias.set", alias=f"{namespace}/{name}@{alias}", targets=stored, actor=actor)
    return row


def get_alias(session: Session, namespace: str, name: str, alias: str) -> Alias:
    """The stored alias, or the implicit ``latest`` (an unsaved ``Alias`` with revision 0);
    ``NotFound`` otherwise."""
    if alias == LATEST_ALIAS:
        latest = implicit_latest(_versions(session, namespace, name))
        if latest is not None:
            return latest
    else:
        row = _find(session, namespace, name, alias, lock=False)
        if row is not None:
            return row
    raise NotFound(f"alias {namespace}/{name}@{alias[:80]} not found")


def list_aliases(session: Session, namespace: str, name: str) -> list[Alias]:
    """The adapter's aliases by name, then the implicit ``latest`` (when a version is
    ready); ``NotFound`` when the adapter has no version."""
    versions = _versions(session, namespace, name)
    if not versions:
        raise NotFound(f"adapter {namespace}/{name} not found")
    rows = list(
        session.execute(
            sa.select(Alias)
            .where(Alias.namespace == namespace, Alias.name == name)
            .order_by(Alias.alias)
        ).scalars()
    )
    latest = implicit_latest(versions)
    return rows + ([latest] if latest is not None else [])


def alias_history(session: Session, namespace: str, name: str, alias: str) -> list[AliasRevision]:
    """Every revision of ``namespace/name@alias`` (also of a deleted one), oldest first;
    ``NotFound`` when it never existed."""
    rows = list(
        session.execute(
            sa.select(AliasRevision)
            .where(
                AliasRevision.namespace == namespace,
                AliasRevision.name == name,
                AliasRevision.alias == alias,
            )
            .order_by(AliasRevision.id)
        ).scalars()
    )
    if not rows:
        raise NotFound(f"alias {namespace}/{name}@{alias[:80]} not found")
    return rows


def delete_alias(
    session: Session, namespace: str, name: str, alias: str, *, actor: str, reason: str | None
) -> Alias:
    """Delete ``namespace/name@alias`` (its history stays); ``NotFound`` if there is none,
    ``invalid_alias`` for ``latest``."""
    if alias == LATEST_ALIAS:
        check_alias_name(alias)
    row = _find(session, namespace, name, alias, lock=True)
    if row is None:
        raise NotFound(f"alias {namespace}/{name}@{alias[:80]} not found")
    _remove(session, row, actor=actor, reason=reason)
    return row


def _remove(session: Session, row: Alias, *, actor: str, reason: str | None) -> None:
    row.revision += 1
    _announce(session, row, "delete", actor=actor, reason=reason)
    session.delete(row)
    session.flush()
    log.info("alias.deleted", alias=f"{row.namespace}/{row.name}@{row.alias}", actor=actor)


# --- a version leaving ready --------------------------------------------------------------


def renormalised(weights: list[int]) -> list[int]:
    """``weights`` scaled to sum to 100 (largest remainder; each stays >= 1)."""
    total = sum(weights)
    exact = [w * TOTAL_WEIGHT / total for w in weights]
    result = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - result[i]), i))
    for i in by_remainder[: TOTAL_WEIGHT - sum(result)]:
        result[i] += 1
    return result


def release_version(
    session: Session, version: AdapterVersion, *, drop: bool, actor: str
) -> list[str]:
    """Before ``version`` leaves ready: the aliases routing to it, by coordinates.

    Without ``drop`` any such alias is ``AliasTargetConflict`` (409 ``alias_target``) naming
    them; with ``drop`` each gets a new revision without ``version`` (weights renormalised),
    or is deleted when ``version`` was its only target. The version row is locked first
    (PostgreSQL), so a concurrent ``set_alias`` cannot slip a new alias in between."""
    session.execute(
        sa.select(AdapterVersion.id).where(AdapterVersion.id == version.id).with_for_update()
    )
    rows = [
        row
        for row in session.execute(
            sa.select(Alias)
            .where(Alias.namespace == version.namespace, Alias.name == version.name)
            .order_by(Alias.alias)
            .with_for_update()
        ).scalars()
        if any(t["adapter_id"] == version.id for t in row.targets)
    ]
    names = [f"{r.namespace}/{r.name}@{r.alias}" for r in rows]
    if rows and not drop:
        raise AliasTargetConflict(
            f"{version.coordinates} is a target of {', '.join(names)}: move or delete "
            "the alias first, or ask to drop it from the alias (drop_from_aliases=true)"
        )
    reason = f"{version.coordinates} left ready"
    for row in rows:
        kept = [t for t in row.targets if t["adapter_id"] != version.id]
        if not kept:
            _remove(session, row, actor=actor, reason=reason)
            continue
        weights = renormalised([t["weight"] for t in kept])
        row.targets = [{**t, "weight": w} for t, w in zip(kept, weights, strict=True)]
        row.revision += 1
        row.updated_at, row.updated_by = utcnow(), actor
        _announce(session, row, "drop", actor=actor, reason=reason)
    session.flush()
    return names
