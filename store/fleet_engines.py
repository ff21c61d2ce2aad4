"""The live engines, as their heartbeats report them: what each serves and holds, how far
it lags behind the registry's fleet generation, and which can serve one adapter now.

An engine "can serve" a version when it runs the version's base model, the version is
``ready``, and the engine has applied a generation at least the version's (so its catalog
has it). What an engine holds is shown only for adapters of namespaces the caller may read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session

from events.heartbeat import EngineHeartbeat
from events.models import parse_coordinates
from store.auth import Principal
from store.catalog import get_version
from store.errors import BadRequest
from store.outbox import current_generation


def engines_view(
    session: Session,
    caller: Principal,
    beats: list[EngineHeartbeat],
    adapter: str | None = None,
) -> dict[str, Any]:
    """``{"generation", "data": [engine...]}``; with ``adapter`` (coordinates) only the
    engines that can serve it now, each saying where it holds it. ``NotFound`` for an
    adapter the caller may not read, as for a missing one; ``BadRequest`` for bad
    coordinates."""
    generation = current_generation(session)
    version = None
    if adapter is not None:
        try:
            namespace, name, number = parse_coordinates(adapter)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        caller.require_read(namespace, f"adapter {adapter!r} not found")
        version = get_version(session, namespace, name, number)
    now = datetime.now(UTC)
    data = []
    for beat in beats:
        if version is not None and not (
            beat.base_model == version.base_model
            and version.status == "ready"
            and beat.generation is not None
            and beat.generation >= (version.generation or 0)
        ):
            continue
        row = {
            "engine_id": beat.engine_id,
            "base_model": beat.base_model,
            "ready": beat.ready,
            "generation": beat.generation,
            "lag": None if beat.generation is None else max(generation - beat.generation, 0),
            "servable": beat.servable,
            "gpu": [a for a in beat.gpu if _visible(caller, a)],
            "cpu": [a for a in beat.cpu if _visible(caller, a)],
            "last_seen_seconds": round((now - beat.at).total_seconds(), 3),
            "ttl_seconds": beat.ttl_seconds,
        }
        if version is not None:
            row["holds"] = [lvl for lvl in ("gpu", "cpu") if adapter in getattr(beat, lvl)]
        data.append(row)
    return {"object": "list", "generation": generation, "data": data}


def _visible(caller: Principal, adapter: str) -> bool:
    namespace, slash, _ = adapter.partition("/")
    return bool(slash) and caller.can_read(namespace)
