"""Percentiles and latency summaries shared by the benchmarks (nearest-rank, no numpy)."""

from __future__ import annotations

import statistics


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summarize(values: list[float]) -> dict[str, float]:
    """Count, p50, p99, max and mean, in milliseconds, of latencies given in seconds."""
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms), 1) if ms else 0.0,
        "mean_ms": round(statistics.fmean(ms), 1) if ms else 0.0,
    }
