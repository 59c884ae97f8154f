"""The NumPy post-process on real outputs: R50 (random weights) on trt-bench's photo, before/after.

    python benchmarks/postprocess_real.py --json benchmarks/results/postprocess_r50_photo.json

The outputs are what `trt-bench` post-processes: scikit-image's astronaut photo at 480x640 through
`trt-export --preset retinanet_r50_fpn --random-init --input-size 480 640` in ONNX Runtime. An
untrained head passes the 0.05 threshold almost everywhere (about 491k of P3's 3.5M pairs, against
a few thousand on the synthetic outputs of benchmarks/postprocess.py), which is what made P3 slow.

"before" is the post-process without the sampled top-k bound (runtime/postprocess.py
`_topk_bound` returning None), which is the code path as it was before the bound; "after" is the
current one. Both run alternately in this process on the same outputs, and must give identical
detections. Then trt-bench itself (bench.run_bench) runs on the model, before and after alternately,
and its `postprocess` row is recorded too: there the maps come fresh from ONNX Runtime, out of cache.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import numpy as np

from retinanet_trt.bench import BenchOptions, run_bench, summarize, synthetic_image
from retinanet_trt.runtime import postprocess as pp
from retinanet_trt.runtime.detector import Detector
from retinanet_trt.runtime.preprocess import preprocess
from retinanet_trt.versions import package_versions

BIN = Path(sys.executable).parent
INPUT_HW = (480, 640)


def export_r50(path: Path) -> None:
    subprocess.run([str(BIN / "trt-export"), "--preset", "retinanet_r50_fpn", "--random-init", "--input-size",
                    str(INPUT_HW[0]), str(INPUT_HW[1]), "-o", str(path), "--quiet"], check=True)


def photo_outputs(onnx: Path) -> tuple[dict[str, np.ndarray], object, list]:
    """The raw outputs, spec and metas of trt-bench's default input (its own functions)."""
    det = Detector.load(onnx, "ort-cpu")
    spec = det.spec
    batch = preprocess([synthetic_image(INPUT_HW)], spec, input_hw=INPUT_HW)
    outputs = det.backend.run(batch.images)
    det.close()
    return outputs, spec, batch.metas


def time_variants(outputs: dict[str, np.ndarray], spec: object, metas: list, iters: int, warmup: int) -> dict:
    """Median wall and thread-CPU ms, total and per level, of each variant, run alternately."""
    def before(*args, **kw):  # type: ignore[no-untyped-def]
        with mock.patch.object(pp, "_topk_bound", lambda *a: None):
            return pp.postprocess(*args, **kw)

    variants = {"before": before, "after": pp.postprocess}
    dets = {name: fn(outputs, spec, metas) for name, fn in variants.items()}
    a, b = dets["before"][0], dets["after"][0]
    identical = (np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
                 and np.array_equal(a.labels, b.labels) and a.names == b.names)
    for _ in range(warmup):
        for fn in variants.values():
            fn(outputs, spec, metas)
    wall: dict[str, list[float]] = {n: [] for n in variants}
    cpu: dict[str, list[float]] = {n: [] for n in variants}
    levels: dict[str, list[dict[str, float]]] = {n: [] for n in variants}
    for _ in range(iters):
        for name, fn in variants.items():
            lv: dict[str, float] = {}
            t0, c0 = time.perf_counter(), time.thread_time()
            fn(outputs, spec, metas, level_times_ms=lv)
            wall[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.thread_time() - c0) * 1e3)
            levels[name].append(lv)
    out: dict = {"identical_detections": identical, "detections": len(b.scores)}
    for name in variants:
        s = summarize(wall[name])
        out[name] = {"total_ms": s["median"], "total_p90_ms": s["p90"], "cpu_ms": statistics.median(cpu[name]),
                     "level_ms": {k: statistics.median(d[k] for d in levels[name]) for k in levels[name][0]}}
    out["speedup"] = out["before"]["total_ms"] / out["after"]["total_ms"]
    return out


def trt_bench_rows(onnx: Path, iters: int, reps: int) -> dict:
    """trt-bench's own post-process row (median ms per image, total and per level), before and
    after, through its Python API (bench.run_bench, what the command runs), alternating reps."""
    opts = BenchOptions(warmup=3, iterations=iters, profile_runs=0)
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(reps):
        for name in runs:
            patch = mock.patch.object(pp, "_topk_bound", lambda *a: None) if name == "before" else nullcontext()
            with patch:
                res = run_bench(str(onnx), ["ort-cpu"], opts)["results"]["ort-cpu"]
            runs[name].append(res["postprocess_ms"])
    out: dict = {"iterations_per_rep": iters, "reps": reps}
    for name, rows in runs.items():
        out[name] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        out[name]["total_per_rep"] = [r["total"] for r in rows]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", type=Path, help="the R50 export (default: export one to a temporary folder)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--bench-iters", type=int, default=20, help="timed iterations of each trt-bench run")
    ap.add_argument("--bench-reps", type=int, default=2, help="trt-bench runs per variant, alternating")
    ap.add_argument("--json", type=Path, help="write results here")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pp-real.") as tmp:
        onnx = args.onnx
        if onnx is None:
            onnx = Path(tmp) / "r50.onnx"
            export_r50(onnx)
        outputs, spec, metas = photo_outputs(onnx)
        floors = {lv: pp.score_prefilter(t) for lv, t in zip(spec.levels, spec.postprocess.score_thresh, strict=True)}
        candidates = {f"p{lv}": int((outputs[f"cls_p{lv}"] > floors[lv]).sum()) for lv in spec.levels}
        pairs = {f"p{lv}": int(outputs[f"cls_p{lv}"].size) for lv in spec.levels}
        timed = time_variants(outputs, spec, metas, args.iters, args.warmup)
        bench = trt_bench_rows(onnx, args.bench_iters, args.bench_reps)

    result = {
        "benchmark": "NumPy post-process on R50 (random weights) outputs of trt-bench's astronaut photo, 480x640",
        "before": "sampled top-k bound disabled (the previous code path)", "after": "current runtime/postprocess.py",
        "iterations": args.iters, "pairs_per_level": pairs, "candidates_above_threshold": candidates,
        **timed, "trt_bench_postprocess_ms": bench,
        # Other processes share this machine: compare before/after from this run, not across runs.
        "load_average_1m": os.getloadavg()[0], "versions": package_versions(),
    }
    b, a = timed["before"], timed["after"]
    print(f"{candidates['p3']} of {pairs['p3']} P3 pairs pass the threshold; identical={timed['identical_detections']}")
    print(f"{'median ms':10} {'before':>8} {'after':>8}")
    for key in [*a["level_ms"], "total"]:
        bv, av = (b["total_ms"], a["total_ms"]) if key == "total" else (b["level_ms"][key], a["level_ms"][key])
        print(f"{key:10} {bv:8.3g} {av:8.3g}")
    print(f"speed-up {timed['speedup']:.1f}x; trt-bench postprocess row: before {bench['before']['total']:.3g} ms "
          f"(p3 {bench['before']['p3']:.3g}), after {bench['after']['total']:.3g} ms (p3 {bench['after']['p3']:.3g})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"JSON -> {args.json}")
    return 0 if timed["identical_detections"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
