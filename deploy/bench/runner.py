"""run_bench: the protocol's warm-up, round-robin timed iterations and profiled runs, and the report."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from retinanet_trt.bench.backends import BenchOptions, check_options, load_detector
from retinanet_trt.bench.inputs import bench_images, resolve_input_hw
from retinanet_trt.bench.profilers import LevelProfiler, make_level_profiler
from retinanet_trt.bench.stats import PER_LEVEL_TOLERANCE, STAGES, central_mean, group_order, median_by_key, summarize
from retinanet_trt.runtime.detector import Detector
from retinanet_trt.runtime.images import LoadedImage
from retinanet_trt.runtime.preprocess import preprocess
from retinanet_trt.spec import ModelSpec
from retinanet_trt.versions import environment


@dataclasses.dataclass
class _Item:
    name: str
    detector: Detector
    spec: ModelSpec  # the model's own: its framework resize, padded (or shrunk) to the one input size
    profiler: LevelProfiler | None
    samples: list[dict[str, float]] = dataclasses.field(default_factory=list)
    post_levels: list[dict[str, float]] = dataclasses.field(default_factory=list)
    profiled: int = 0


def _iteration(item: _Item, images: list[LoadedImage], input_hw: tuple[int, int], keep: bool) -> np.ndarray:
    """One end-to-end inference of a batch, timed by part; returns the network input for a profiled run."""
    t0 = time.perf_counter()
    batch = preprocess(images, item.spec, input_hw=input_hw)
    t1 = time.perf_counter()
    item.detector.detect_batch(batch)
    t2 = time.perf_counter()
    if keep:
        times = item.detector.last_times_ms
        item.samples.append({
            "preprocess": (t1 - t0) * 1e3, "h2d": times["h2d"], "compute": times["compute"], "d2h": times["d2h"],
            "postprocess": times["postprocess"], "end_to_end": (t2 - t0) * 1e3,
        })
        item.post_levels.append(dict(times["postprocess_levels"]))
    return batch.images


def _max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float | None:
    common = [k for k in a if k in b and a[k].shape == b[k].shape]
    return max((float(np.max(np.abs(a[k] - b[k]))) for k in common), default=None)


def run_bench(model: str, backends: Sequence[str], opts: BenchOptions,
              log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Benchmark `backends` on `model` side by side; returns the JSON-ready report."""
    backends = check_options(model, backends, opts)
    detectors = {b: load_detector(model, b, opts) for b in backends}
    input_hw = resolve_input_hw(model, detectors, opts.input_hw)
    images = bench_images(opts.images, input_hw)
    profile_runs = opts.iterations if opts.profile_runs is None else opts.profile_runs
    items = [
        _Item(b, d, d.spec, make_level_profiler(model, b, d, opts.threads) if profile_runs else None)
        for b, d in detectors.items()
    ]

    # The same input through every backend once: raw outputs should agree (same weights, same work).
    def batch_at(i: int) -> list[LoadedImage]:  # iteration i's images: the set, cycled
        return [images[(i * opts.batch + j) % len(images)] for j in range(opts.batch)]

    first_batch = preprocess(batch_at(0), items[0].spec, input_hw=input_hw)
    reference = items[0].detector.backend.run(first_batch.images)
    diffs = {it.name: _max_abs_diff(reference, it.detector.backend.run(first_batch.images)) for it in items[1:]}

    log(f"warm-up: {opts.warmup} iteration(s) per backend")
    for i in range(opts.warmup):
        for it in items:
            x = _iteration(it, batch_at(i), input_hw, keep=False)
            if it.profiler is not None and it.profiler.interleaved:
                it.profiler.run(x, keep=False)
    log(f"timing: {opts.iterations} iteration(s) per backend, round-robin over {', '.join(backends)}")
    for i in range(opts.iterations):
        for it in items:
            x = _iteration(it, batch_at(i), input_hw, keep=True)
            if it.profiler is not None and it.profiler.interleaved and it.profiled < profile_runs:
                it.profiler.run(x, keep=True)
                it.profiled += 1
    for it in items:
        if it.profiler is None:
            continue
        x = preprocess(batch_at(0), it.spec, input_hw=input_hw).images
        if not it.profiler.interleaved:
            for _ in range(opts.warmup):
                it.profiler.run(x, keep=False)
        while it.profiled < profile_runs:
            it.profiler.run(x, keep=True)
            it.profiled += 1

    results = {it.name: _backend_result(it, diffs.get(it.name), opts.batch) for it in items}
    _add_ratios(results, list(backends))
    if _model_info(model).get("precision") == "int8":
        _label_int8_arithmetic(items, results)
    for it in items:
        it.detector.close()
    return {
        "tool": "trt-bench",
        "model": str(model),
        "model_name": items[0].detector.spec.name,
        "model_info": _model_info(model),
        "levels": list(items[0].detector.spec.levels),
        "backends": list(backends),
        "protocol": {
            "warmup": opts.warmup, "iterations": opts.iterations, "profile_runs": profile_runs,
            "input_hw": list(input_hw), "batch": opts.batch, "threads": opts.threads or "library default",
            "device": opts.device, "cuda_graph": opts.cuda_graph,
            "images": images[0].source if opts.images is None else f"{len(images)} image(s) from {', '.join(map(str, opts.images))}",
            "order": "warm-up, then timed iterations round-robin over the backends; ORT and torch profiled runs "
                     "interleaved with the timed ones, TensorRT's after them",
            "preprocess": "resize to the input size + normalise + pad (images decoded beforehand)",
            "statistics": "median, p90, p99 over timed iterations (each one batch); throughput = images / sum of end-to-end times",
        },
        "versions": environment(),
        "results": results,
    }


def _model_info(model: str) -> dict[str, Any]:
    """What trt-export recorded in an ONNX file (seed, precision, input size); {} for other models."""
    if not model.endswith(".onnx"):
        return {}
    from retinanet_trt.spec.metadata import read_info

    return read_info(model)


def _backend_result(item: _Item, diff: float | None, batch: int) -> dict[str, Any]:
    """Stage times are per inference (one batch); throughput counts images."""
    stages = {s: summarize([row[s] for row in item.samples]) for s in STAGES}
    post_levels = median_by_key(item.post_levels)
    out: dict[str, Any] = {
        "stages_ms": stages,
        "compute_ms": stages["compute"]["median"],
        "end_to_end_ms": stages["end_to_end"]["median"],
        "throughput_ips": batch * len(item.samples) / (sum(r["end_to_end"] for r in item.samples) / 1e3),
        "postprocess_ms": {"total": stages["postprocess"]["median"], **post_levels},
    }
    if diff is not None:
        out["max_abs_diff_vs_first"] = diff
    if item.profiler is None:
        out["per_level_ms"] = None
        out["per_level_note"] = "not profiled (--profile-runs 0, or the backend exposes no per-layer profiler)"
        return out
    profile = item.profiler.finish()
    if not profile.runs:
        out["per_level_ms"] = None
        out["per_level_note"] = "the profiler reported no runs"
        return out
    means = central_mean(profile.runs)
    order = group_order(item.detector.spec.levels, list(means))
    per_level = {g: means.get(g, 0.0) for g in order}
    per_level.update({g: ms for g, ms in means.items() if g not in per_level})  # unexpected groups stay visible
    total = sum(per_level.values())
    compute = out["compute_ms"]
    out["per_level_ms"] = per_level
    out["per_level_check"] = {
        "sum_ms": total,
        "compute_ms": compute,
        "sum_over_compute": total / compute if compute else None,
        "within_tolerance": bool(compute) and abs(total / compute - 1.0) <= PER_LEVEL_TOLERANCE,
        "tolerance": PER_LEVEL_TOLERANCE,
        "profiled_runs": len(profile.runs),
        "profiled_run_ms": float(np.median(profile.profiled_run_ms)) if profile.profiled_run_ms else None,
        "method": profile.method + "; per part: mean over the profiled runs with an interquartile total; not scaled",
    }
    return out


def _label_int8_arithmetic(items: Sequence[_Item], results: dict[str, dict[str, Any]]) -> None:
    """ORT CPU runs a Q/DQ file through fused integer kernels whose results depend on the CPU:
    its figure is a speed figure; accuracy is trt-calib's, in simulated Q/DQ."""
    from retinanet_trt.runtime.backends.ort_backend import ARITHMETIC_LABELS

    for it in items:
        arithmetic = getattr(it.detector.backend, "arithmetic", None)
        if it.name == "ort-cpu" and arithmetic in ARITHMETIC_LABELS:
            results[it.name]["arithmetic"] = ARITHMETIC_LABELS[arithmetic]


def _add_ratios(results: dict[str, dict[str, Any]], order: list[str]) -> None:
    """time ratio (this / first; < 1 is faster) and speed-up (first / this) for end-to-end and compute."""
    first = results[order[0]]
    for name in order[1:]:
        r = results[name]
        r["ratio_vs_first"] = {
            key: {"time_ratio": r[f"{key}_ms"] / first[f"{key}_ms"], "speedup": first[f"{key}_ms"] / r[f"{key}_ms"]}
            for key in ("end_to_end", "compute")
        }


