"""The total-queue checker (after Jepsen's ``total-queue``): every announcement that went in
comes out exactly once, as the outcome it should have.

For each announced ``event_id`` the registry must hold one ingest record in a final state
(``done`` / ``failed``) and, at the announced coordinates, one version whose status is the
expected outcome (``ready`` in an auto-approving namespace, ``pending`` in a manual one,
``failed`` with the expected code for a broken artifact). Around that:

* every blob key a file row references exists in the blob store (no row points at nothing);
* every ``ready`` version has a ``fleet.refresh`` ``load`` on the refresh stream, and no
  version got two loads from two different outbox rows (redelivery of the *same* outbox
  row is allowed by the contract: entries carry ``outbox_id`` for consumers to dedup);
* no version exists that nobody announced, and nothing sits in the ingest dead-letter stream.

``lost``: an announcement with no final outcome. ``duplicated``: two of something that must
be one. ``unexpected``: an outcome other than the one announced, or something nobody asked for.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import redis
import sqlalchemy as sa
from harness import Announced

from events import streams
from store.blobs import BlobStore
from store.models import AdapterFile, AdapterVersion, IngestRecord, OutboxRow

FINAL_RECORD = ("done", "failed")
UNSETTLED_VERSION = ("uploading", "validating")

REPORTS: list[Report] = []  # every report of this run, for the end-of-run table


@dataclass
class Report:
    """What the checker found. ``ok`` only when every list is empty."""

    name: str
    events: int
    outcomes: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing_blobs: list[str] = field(default_factory=list)
    missing_refresh: list[str] = field(default_factory=list)
    refresh_redelivered: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    crashes: dict[str, list[str]] = field(default_factory=dict)  # processes that died alone
    measured: dict[str, object] = field(default_factory=dict)  # a test's own figures
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.unexpected
            or self.missing_blobs
            or self.missing_refresh
        )

    def counts(self) -> dict[str, object]:
        return {
            "test": self.name,
            "events": self.events,
            "faults": sum(self.faults.values()),
            "fault_kinds": dict(self.faults),
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "unexpected": len(self.unexpected),
            "missing_blobs": len(self.missing_blobs),
            "missing_refresh": len(self.missing_refresh),
            "refresh_redelivered": self.refresh_redelivered,
            "crashes": {name: len(why) for name, why in self.crashes.items()},
            "outcomes": dict(self.outcomes),
            "seconds": round(self.seconds, 1),
            **({"measured": self.measured} if self.measured else {}),
        }

    def summary(self) -> str:
        lines = [json.dumps(self.counts(), sort_keys=True)]
        for label, items in (
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("unexpected", self.unexpected),
            ("missing blob", self.missing_blobs),
            ("missing refresh", self.missing_refresh),
        ):
            lines += [f"  {label}: {item}" for item in items[:20]]
        for name, why in self.crashes.items():
            lines += [f"  crash of {name}: {w}" for w in why[:5]]
        return "\n".join(lines)


def record(report: Report) -> Report:
    """Keep ``report`` for the end-of-run table (and print it now, for ``-s`` runs)."""
    REPORTS.append(report)
    print(report.summary())
    return report


def refresh_entries(client: redis.Redis) -> list[tuple[str | None, dict]]:
    """``(outbox_id, event)`` of every entry on the fleet refresh stream."""
    out = []
    for _entry_id, fields in client.xrange(streams.REFRESH_STREAM):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        out.append((f.get(streams.OUTBOX_ID_FIELD), json.loads(f["event"])))
    return out


def check(
    name: str,
    engine: sa.Engine,
    client: redis.Redis,
    blobs: BlobStore,
    announced: list[Announced],
    others: set[str] | frozenset[str] = frozenset(),
) -> Report:
    """Compare what was announced with what the registry, blob store and streams hold.
    ``others``: coordinates registered outside the event path (API uploads) that the
    caller accounts for; any other version nobody announced is unexpected."""
    by_event = {a.event_id: a for a in announced}
    report = Report(name=name, events=len(by_event))
    with engine.connect() as conn:
        records = {r.event_id: r for r in conn.execute(sa.select(IngestRecord)).all()}
        versions = conn.execute(sa.select(AdapterVersion)).all()
        files = conn.execute(sa.select(AdapterFile.adapter_id, AdapterFile.blob_key)).all()
        unsent = conn.execute(
            sa.select(sa.func.count()).select_from(OutboxRow).where(OutboxRow.sent_at.is_(None))
        ).scalar_one()
    by_coords: dict[str, list] = defaultdict(list)
    for v in versions:
        by_coords[f"{v.namespace}/{v.name}@{v.version}"].append(v)

    for event_id, a in by_event.items():
        record = records.get(event_id)
        if record is None or record.status not in FINAL_RECORD:
            state = "no ingest record" if record is None else f"record {record.status}"
            report.lost.append(f"{a.coordinates} ({event_id}): {state}")
            continue
        rows = by_coords.get(a.coordinates, [])
        if len(rows) > 1:
            report.duplicated.append(f"{a.coordinates}: {len(rows)} versions")
        if not rows:
            report.lost.append(f"{a.coordinates} ({event_id}): record {record.status}, no version")
            continue
        v = rows[0]
        report.outcomes[v.status] += 1
        if v.status != a.expected:
            reason = f" {v.status_code}: {(v.status_reason or '')[:200]}" if v.status_code else ""
            report.unexpected.append(f"{a.coordinates}: {v.status} != {a.expected}{reason}")
        elif a.expected == "failed" and (v.status_code != a.code or not v.status_reason):
            report.unexpected.append(f"{a.coordinates}: failed {v.status_code} != {a.code}")
        expected_record = "failed" if a.expected == "failed" else "done"
        if record.status != expected_record:
            report.unexpected.append(
                f"{a.coordinates}: ingest {record.status} != {expected_record}"
                f" ({record.error_code}: {(record.error_message or '')[:200]})"
            )
        elif record.adapter_id is not None and record.adapter_id != v.id:
            report.duplicated.append(f"{a.coordinates}: record names {record.adapter_id}")

    wanted = {a.coordinates for a in announced} | set(others)
    for coords in by_coords:
        if coords not in wanted:
            report.unexpected.append(f"{coords}: a version nobody announced")
    for v in versions:
        if v.status in UNSETTLED_VERSION:
            report.unexpected.append(f"{v.namespace}/{v.name}@{v.version}: left {v.status}")
    if unsent:
        report.lost.append(f"{unsent} outbox rows never relayed")

    report.missing_blobs = sorted(
        {f"{key} (adapter {adapter_id})" for adapter_id, key in files if not blobs.exists(key)}
    )

    loads: dict[str, set[str | None]] = defaultdict(set)
    deliveries: Counter[tuple[str, str | None]] = Counter()
    for outbox_id, event in refresh_entries(client):
        if event.get("action") == "load":
            loads[event["adapter_id"]].add(outbox_id)
            deliveries[(event["adapter_id"], outbox_id)] += 1
    report.refresh_redelivered = sum(n - 1 for n in deliveries.values())
    ids = {v.id: v for v in versions}
    for v in versions:
        if v.status == "ready" and not loads.get(v.id):
            report.missing_refresh.append(f"{v.namespace}/{v.name}@{v.version} ({v.id})")
    for adapter_id, outbox_ids in loads.items():
        if len(outbox_ids) > 1:
            report.duplicated.append(f"refresh load of {adapter_id} from outbox {outbox_ids}")
        if adapter_id not in ids:
            report.unexpected.append(f"refresh load of unknown adapter {adapter_id}")

    dead = client.xlen(streams.JOBS_DLQ_STREAM) if client.exists(streams.JOBS_DLQ_STREAM) else 0
    if dead:
        report.lost.append(f"{dead} announcements dead-lettered")
    return report


def settled(engine: sa.Engine, client: redis.Redis, announced: list[Announced]) -> bool:
    """True once every announcement has a final ingest record, no version is mid-way and the
    outbox is drained (and its refresh entries are therefore on the stream)."""
    ids = {a.event_id for a in announced}
    with engine.connect() as conn:
        final = conn.execute(
            sa.select(sa.func.count())
            .select_from(IngestRecord)
            .where(IngestRecord.event_id.in_(ids), IngestRecord.status.in_(FINAL_RECORD))
        ).scalar_one()
        busy = conn.execute(
            sa.select(sa.func.count())
            .select_from(AdapterVersion)
            .where(AdapterVersion.status.in_(UNSETTLED_VERSION))
        ).scalar_one()
        unsent = conn.execute(
            sa.select(sa.func.count()).select_from(OutboxRow).where(OutboxRow.sent_at.is_(None))
        ).scalar_one()
    return final == len(ids) and busy == 0 and unsent == 0
