"""The report for people: tables and a PNG chart."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from retinanet_trt.bench.stats import STAGES


def format_report(report: dict[str, Any]) -> str:
    """Tables for people: parts (median / p90 / p99), per FPN level, post-process per level, ratios."""
    from retinanet_trt.tables import format_table

    names = report["backends"]
    res = report["results"]
    proto = report["protocol"]
    h, w = proto["input_hw"]
    lines = [f"{report['model_name']} ({report['model']}) at {h}x{w}, {proto['iterations']} iterations after "
             f"{proto['warmup']} warm-up, threads: {proto['threads']}, input: {proto['images']}"]
    lines += [f"{n}: {res[n]['arithmetic']}" for n in names if "arithmetic" in res[n]]
    lines.append("")

    headers = ["part (ms)"] + [f"{n} {q}" for n in names for q in ("median", "p90", "p99")]
    rows = [[s] + [res[n]["stages_ms"][s][q] for n in names for q in ("median", "p90", "p99")] for s in STAGES]
    rows.append(["images/s"] + [v for n in names for v in (res[n]["throughput_ips"], "", "")])
    lines += [format_table(headers, rows), ""]

    profiled = [n for n in names if res[n].get("per_level_ms")]
    if profiled:
        groups = list(dict.fromkeys(g for n in profiled for g in res[n]["per_level_ms"]))
        headers = ["compute by part (ms)"] + [c for n in profiled for c in (n, "%")]
        rows = []
        for g in groups:
            row: list[Any] = [g]
            for n in profiled:
                ms = res[n]["per_level_ms"].get(g, 0.0)
                row += [ms, f"{100 * ms / res[n]['compute_ms']:.1f}"]
            rows.append(row)
        checks = {n: res[n]["per_level_check"] for n in profiled}
        rows.append(["sum of parts"] + [v for n in profiled for v in (checks[n]["sum_ms"], "")])
        rows.append(["compute (un-profiled median)"] + [v for n in profiled for v in (checks[n]["compute_ms"], "")])
        rows.append(["sum / compute"] + [v for n in profiled for v in (
            f"{checks[n]['sum_over_compute']:.3f}", "ok" if checks[n]["within_tolerance"] else "OFF >10%")])
        lines += [format_table(headers, rows), ""]

    keys = list(dict.fromkeys(k for n in names for k in res[n]["postprocess_ms"] if k != "total"))
    headers = ["post-process (ms)"] + names
    rows = [[k] + [res[n]["postprocess_ms"].get(k, 0.0) for n in names] for k in keys + ["total"]]
    lines += [format_table(headers, rows)]

    for n in names[1:]:
        r = res[n]["ratio_vs_first"]
        diff = res[n].get("max_abs_diff_vs_first")
        lines.append(f"{n} vs {names[0]}: end to end {r['end_to_end']['time_ratio']:.3f}x the time "
                     f"({r['end_to_end']['speedup']:.2f}x speed-up), compute {r['compute']['time_ratio']:.3f}x "
                     f"({r['compute']['speedup']:.2f}x)" + (f"; outputs max abs diff {diff:.3g}" if diff is not None else ""))
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """PNG bar chart: parts end to end, compute per FPN level, post-process per level; one bar per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retinanet_trt.fileio import atomic_path

    names = report["backends"]
    res = report["results"]
    panels: list[tuple[str, list[str], Callable[[str, str], float]]] = [
        ("end to end by part (median ms)", list(STAGES), lambda n, k: res[n]["stages_ms"][k]["median"]),
    ]
    profiled = [n for n in names if res[n].get("per_level_ms")]
    if profiled:
        groups = list(dict.fromkeys(g for n in profiled for g in res[n]["per_level_ms"]))
        panels.append(("compute by part / FPN level (ms, profiled)", groups,
                       lambda n, k: (res[n].get("per_level_ms") or {}).get(k, 0.0)))
    post_keys = list(dict.fromkeys(k for n in names for k in res[n]["postprocess_ms"] if k != "total"))
    panels.append(("post-process by level (median ms)", post_keys, lambda n, k: res[n]["postprocess_ms"].get(k, 0.0)))

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    width = 0.8 / len(names)
    for ax, (title, keys, value) in zip(axes[0], panels, strict=True):
        x = np.arange(len(keys))
        for i, n in enumerate(names):
            ax.bar(x + (i - (len(names) - 1) / 2) * width, [value(n, k) for k in keys], width, label=n)
        ax.set_xticks(x, keys, rotation=30, ha="right")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("ms")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    h, w = report["protocol"]["input_hw"]
    fig.suptitle(f"trt-bench: {report['model_name']} {h}x{w}, {report['protocol']['iterations']} iterations")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
