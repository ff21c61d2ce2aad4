"""What engines route to and keep resident (issue 13): the fleet view's aliases, each
adapter's implicit ``latest``, and pins.

* ``implicit_latest``: ``namespace/name@latest`` is never stored; it is the highest ready
  SemVer (``events.models.version_key``: 1.10.0 > 1.9.0, 1.0.0-rc.2 < 1.0.0-rc.10 < 1.0.0),
  weight 100, revision 0.
* ``fleet_aliases`` / ``pinned_ids``: what ``store.catalog.fleet_state`` adds to
  ``GET /v1/fleet``: the stored aliases of a base model (``store.aliases``) plus every
  implicit ``latest``, and the versions pinned themselves or through a pinned alias.
* ``set_pinned``: pin or unpin a version; a change to a ready one bumps the generation and
  writes a ``FleetRefresh`` load row (engines preload it).

Nothing here commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
import structlog
from sqlmodel import Session

from events.models import LATEST_ALIAS, version_key
from store.errors import NotFound
from store.models import AdapterVersion, Alias, utcnow
from store.outbox import announce_refresh

__all__ = ["alias_out", "fleet_aliases", "implicit_latest", "pinned_ids", "set_pinned"]

log = structlog.get_logger(__name__)

TOTAL_WEIGHT = 100
READY = "ready"  # store.approval.Status.READY; approval imports what imports this module


def set_pinned(session: Session, adapter_id: str, pinned: bool, *, actor: str) -> AdapterVersion:
    """Pin or unpin a version. A change to a ready version bumps the generation and writes a
    ``FleetRefresh`` load row (engines preload it); the same value again changes nothing."""
    version = session.get(AdapterVersion, adapter_id, with_for_update=True)
    if version is None:
        raise NotFound(f"adapter {adapter_id} not found")
    if version.pinned == pinned:
        return version
    version.pinned = pinned
    version.updated_at, version.updated_by = utcnow(), actor
    if version.status == READY:
        announce_refresh(session, version, "load")
    session.flush()
    log.info("adapter.pinned" if pinned else "adapter.unpinned", adapter_id=adapter_id)
    return version


def _highest_ready(versions: Sequence[Any]) -> Any | None:
    """The ready one with the highest SemVer of ``versions`` (entities or column rows)."""
    ready = [v for v in versions if v.status == READY]
    return max(ready, key=lambda v: version_key(v.version)) if ready else None


def implicit_latest(versions: Sequence[AdapterVersion]) -> Alias | None:
    top = _highest_ready(versions)
    if top is None:
        return None
    return Alias(
        id=f"latest:{top.namespace}/{top.name}",
        namespace=top.namespace,
        name=top.name,
        alias=LATEST_ALIAS,
        base_model=top.base_model,
        targets=[{"version": top.version, "adapter_id": top.id, "weight": TOTAL_WEIGHT}],
        pinned=False,
        revision=0,
        generation=top.generation,
        created_at=top.updated_at,
        created_by="lorafleet",
        updated_at=top.updated_at,
        updated_by="lorafleet",
    )


def alias_out(row: Alias | SimpleNamespace) -> dict[str, Any]:
    """An alias as the fleet view and the API show it; ``implicit`` for ``latest``."""
    return {
        "namespace": row.namespace,
        "name": row.name,
        "alias": row.alias,
        "coordinates": f"{row.namespace}/{row.name}@{row.alias}",
        "base_model": row.base_model,
        "revision": row.revision,
        "generation": row.generation,
        "implicit": row.revision == 0,
        "pinned": row.pinned,
        "targets": [
            {"version": t["version"], "adapter_id": t["adapter_id"], "weight": t["weight"]}
            for t in row.targets
        ],
    }


def _latest_entry(versions: Sequence[Any]) -> dict[str, Any] | None:
    """``alias_out(implicit_latest(versions))`` from a plain record, not an entity (the
    fleet view makes one per adapter, and building entities was most of its cost)."""
    top = _highest_ready(versions)
    if top is None:
        return None
    target = {"version": top.version, "adapter_id": top.id, "weight": TOTAL_WEIGHT}
    return alias_out(
        SimpleNamespace(
            namespace=top.namespace,
            name=top.name,
            alias=LATEST_ALIAS,
            base_model=top.base_model,
            revision=0,
            generation=top.generation,
            pinned=False,
            targets=[target],
        )
    )


def fleet_aliases(session: Session, base_model: str, ready: Sequence[Any]) -> list[dict[str, Any]]:
    """The aliases engines of ``base_model`` route: the stored ones (only targets among
    ``ready``, the ready versions of that base model: entities or rows of their columns)
    and the implicit ``latest`` of every adapter with a ready version of it, sorted by
    coordinates."""
    ready_ids = {v.id for v in ready}
    out: list[dict[str, Any]] = []
    for row in session.execute(sa.select(Alias).where(Alias.base_model == base_model)).scalars():
        entry = alias_out(row)
        entry["targets"] = [t for t in entry["targets"] if t["adapter_id"] in ready_ids]
        if entry["targets"]:
            out.append(entry)
    by_adapter: dict[tuple[str, str], list[Any]] = {}
    for v in ready:
        by_adapter.setdefault((v.namespace, v.name), []).append(v)
    for versions in by_adapter.values():
        latest = _latest_entry(versions)
        if latest is not None:
            out.append(latest)
    return sorted(out, key=lambda a: (a["namespace"], a["name"], a["alias"]))


def pinned_ids(session: Session, base_model: str) -> set[str]:
    """Ids of the versions of ``base_model`` kept resident: pinned themselves, or a target
    of a pinned alias."""
    ids = set(
        session.execute(
            sa.select(AdapterVersion.id).where(
                AdapterVersion.base_model == base_model, AdapterVersion.pinned.is_(True)
            )
        ).scalars()
    )
    for targets in session.execute(
        sa.select(Alias.targets).where(Alias.base_model == base_model, Alias.pinned.is_(True))
    ).scalars():
        ids.update(t["adapter_id"] for t in targets)
    return ids
