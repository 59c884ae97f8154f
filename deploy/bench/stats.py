"""Statistics of timed samples: median/p90/p99, central means of profiled runs, group order."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np

STAGES = ("preprocess", "h2d", "compute", "d2h", "postprocess", "end_to_end")
PER_LEVEL_TOLERANCE = 0.10  # per-level sum vs un-profiled compute: DESIGN's acceptance bound


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """median, p90, p99, mean, min and count of millisecond samples."""
    a = np.asarray(samples, dtype=np.float64)
    return {
        "median": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "n": int(a.size),
    }


def median_by_key(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per key, the median over rows (a key missing from a row counts as 0 there)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: float(statistics.median(row.get(k, 0.0) for row in rows)) for k in keys}


def central_mean(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per key, the mean over the runs whose total lies within the interquartile range of totals.

    Means add up (the parts sum to the mean total of those runs), unlike per-part medians, which
    under preemption spikes in different parts on different runs sum to less than a typical run;
    keeping the middle half of runs drops those spikes as a median would.
    """
    totals = np.array([sum(r.values()) for r in runs])
    lo, hi = np.percentile(totals, [25, 75])
    kept = [r for r, t in zip(runs, totals, strict=True) if lo <= t <= hi] or list(runs)
    keys = list(dict.fromkeys(k for row in kept for k in row))
    return {k: float(np.mean([row.get(k, 0.0) for row in kept])) for k in keys}


def group_order(levels: Sequence[int], present: Sequence[str] = ()) -> list[str]:
    """backbone, fpn, p3..pL, other, then 'post' (in-graph post-process of end-to-end models) and
    'mixed' (a fused layer spanning groups), each only when present."""
    order = ["backbone", "fpn", *(f"p{lv}" for lv in levels), "other"]
    return order + [g for g in ("post", "mixed") if g in present]


