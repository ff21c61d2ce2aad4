"""What the console's pages show, as plain values: a version's validation facts, its metrics
chart, and the comparison with the version of the same adapter that is ready now. Reads
only; the rules stay in the service modules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session

from store import catalog
from store.approval import Status
from store.errors import LorafleetError
from store.models import AdapterVersion

CHART_W, CHART_H, CHART_PAD = 320, 120, 8


@dataclass(frozen=True)
class Series:
    """One metric drawn as a line: its name, the SVG points, first and last value."""

    name: str
    points: str
    first: float
    last: float


def age(then: datetime, now: datetime | None = None) -> str:
    """``then`` as an age a reviewer reads at a glance: 42s, 7m, 3h, 2d."""
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def metric_series(metrics: dict[str, Any] | None) -> list[Series]:
    """Every metric that is a list of numbers (a training curve), as SVG polyline points in
    a ``CHART_W x CHART_H`` box, each scaled to its own range."""
    out = []
    for name, values in sorted((metrics or {}).items()):
        if not isinstance(values, list) or len(values) < 2:
            continue
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        step = (CHART_W - 2 * CHART_PAD) / (len(values) - 1)
        points = " ".join(
            f"{CHART_PAD + i * step:.1f},"
            f"{CHART_H - CHART_PAD - (v - low) / span * (CHART_H - 2 * CHART_PAD):.1f}"
            for i, v in enumerate(values)
        )
        out.append(Series(name, points, float(values[0]), float(values[-1])))
    return out


def scalar_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The metrics that are single values (final loss, accuracy, ...)."""
    return {k: v for k, v in sorted((metrics or {}).items()) if not isinstance(v, (list, dict))}


def module_shapes(session: Session, version: AdapterVersion) -> list[dict[str, Any]]:
    """Per target module, the LoRA A and B shapes validation checked against the base model:
    A ``[rank, in]``, B ``[out, rank]``. Empty when the base model is gone."""
    if not version.target_modules or not version.rank:
        return []
    try:
        shapes = catalog.get_base_model_spec(session, version.base_model).module_shapes()
    except LorafleetError:
        return []
    rank = version.rank
    return [
        {
            "module": m,
            "a": f"[{rank}, {shapes[m][0]}]",
            "b": f"[{shapes[m][1]}, {rank}]",
        }
        for m in version.target_modules
        if m in shapes
    ]


def ready_counterpart(session: Session, version: AdapterVersion) -> AdapterVersion | None:
    """The version of the same ``namespace/name`` that is ready now (the newest serving
    change if several are), other than ``version`` itself."""
    ready = [
        v
        for v in catalog.list_versions(session, version.namespace, version.name)
        if v.status == Status.READY and v.id != version.id
    ]
    return max(ready, key=lambda v: v.generation, default=None)


def comparison(this: AdapterVersion, other: AdapterVersion) -> list[dict[str, Any]]:
    """Side-by-side rows: what differs between this version and the ready one."""
    rows: list[dict[str, Any]] = [
        {"field": "version", "this": this.version, "ready": other.version},
        {"field": "rank", "this": this.rank, "ready": other.rank},
        {"field": "alpha", "this": this.alpha, "ready": other.alpha},
        {
            "field": "modules",
            "this": ", ".join(this.target_modules or []),
            "ready": ", ".join(other.target_modules or []),
        },
        {"field": "bytes", "this": this.total_bytes, "ready": other.total_bytes},
    ]
    mine, theirs = scalar_metrics(this.metrics), scalar_metrics(other.metrics)
    for key in sorted(set(mine) | set(theirs)):
        rows.append({"field": f"metric {key}", "this": mine.get(key), "ready": theirs.get(key)})
    for row in rows:
        row["differs"] = row["this"] != row["ready"]
    return rows
