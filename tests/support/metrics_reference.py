"""The metrics reference table (``docs/METRICS.md``) against a real ``/metrics`` scrape.

* ``reference_rows()``: the table's rows (name as scraped, type, labels, processes).
* ``assert_matches_reference(text, process)``: every family in the scrape ``text`` is a row
  exposed by ``process`` with that type and (where samples show them) those labels, and
  every such row is in the scrape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

METRICS_DOC = Path(__file__).resolve().parents[2] / "docs" / "METRICS.md"
_ROW = re.compile(r"^\| `(lorafleet_[a-z_]+)` \| (\w+) \|([^|]*)\|([^|]+)\|")


@dataclass(frozen=True)
class Row:
    """One metric of the reference table."""

    name: str
    type: str
    labels: frozenset[str]
    processes: frozenset[str]


def reference_rows() -> dict[str, Row]:
    """``name -> Row`` for every row of ``docs/METRICS.md``'s table."""
    rows = {}
    for line in METRICS_DOC.read_text().splitlines():
        match = _ROW.match(line)
        if match:
            name, kind, labels, processes = match.groups()
            rows[name] = Row(
                name,
                kind,
                frozenset(re.findall(r"`(\w+)`", labels)),
                frozenset(p.strip() for p in processes.split(",")),
            )
    return rows


def exposed(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """``name as scraped -> (type, labels seen on its samples)`` of one scrape."""
    out = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = frozenset(k for s in family.samples for k in s.labels if k != "le")
        out[name] = (family.type, labels)
    return out


def assert_matches_reference(text: str, process: str) -> None:
    """The scrape ``text`` of ``process`` and the table agree (see the module docstring)."""
    rows = reference_rows()
    families = exposed(text)
    undocumented = sorted(set(families) - set(rows))
    assert not undocumented, (
        f"{process} exposes metrics missing from docs/METRICS.md: {undocumented}"
    )
    elsewhere = sorted(n for n in families if process not in rows[n].processes)
    assert not elsewhere, f"docs/METRICS.md does not list {process} for {elsewhere}"
    missing = sorted(n for n, r in rows.items() if process in r.processes and n not in families)
    assert not missing, f"docs/METRICS.md lists {missing} for {process}; not exposed"
    for name, (kind, labels) in families.items():
        assert kind == rows[name].type, f"{name}: exposed as {kind}, documented {rows[name].type}"
        assert labels <= rows[name].labels, f"{name}: labels {sorted(labels)} not documented"
    assert not re.search(r"^\w+_created[{ ]", text, re.M), "a _created sample is exposed"


def sample_value(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with exactly ``labels`` in the scrape ``text``; 0
    when it is not there (a counter nothing has counted yet)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def requests_counted(text: str, method: str, route: str, status: str) -> float:
    """How many requests the registry scrape ``text`` counted for (method, route template,
    status)."""
    return sample_value(
        text, "lorafleet_api_request_seconds_count", method=method, route=route, status=status
    )
