"""ONNX Runtime CPU latency of the FP32, FP16 and INT8 files of one model, in one run.

    python benchmarks/precision_latency.py m.onnx --calib demo --json benchmarks/results/precision_tiny.json

FP16 and INT8 files are made from the FP32 one with retinanet_trt.calib (or given with --fp16 /
--int8). All sessions get the same input (a held-out photo, pre-processed as the runner does)
and the same thread count; timed iterations alternate between the files, so machine noise falls
on all of them alike. Reported: median, p90, p99 and the ratio of medians to FP32.

ONNX Runtime's CPU provider has few FP16 kernels: it inserts casts and computes most FP16 nodes
in FP32, so the FP16 figure measures that, not what a GPU does with the file. The sessions use
ORT's default optimisations, which fuse INT8 Q/DQ nodes into integer kernels where ORT's CPU
patterns match ("ORT CPU fused integer kernels, speed only"): their results depend on the CPU
(no VNNI: they saturate), so these are speed figures only. The INT8 file is also timed in simulated
Q/DQ (graph optimisations off: the arithmetic accuracy is scored in), row "int8 simulated". The
accuracy figures recorded with them (`made_here`) are trt-calib's, in that simulated arithmetic.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from retinanet_trt.calib.accuracy import held_out_inputs
from retinanet_trt.calib.convert import ConvertOptions, convert
from retinanet_trt.runtime.backends.ort_backend import ARITHMETIC_LABELS, FUSED, SIMULATED, cpu_session
from retinanet_trt.spec.metadata import read_spec
from retinanet_trt.versions import cpu_flags, package_versions


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "min_ms": float(a.min())}


# The INT8 file once more in the arithmetic accuracy is scored in, for what that costs on the CPU.
SIMULATED_ROW = "int8 simulated"


def measure(files: dict[str, Path], x: np.ndarray, threads: int, warmup: int, iters: int) -> dict[str, dict[str, float]]:
    """Per file: latency stats of session.run on x, iterations interleaved across files; every file
    in ORT's default (fused) arithmetic, plus the INT8 file in simulated Q/DQ (SIMULATED_ROW)."""
    sessions = {k: cpu_session(p, threads, arithmetic=FUSED) for k, p in files.items()}
    if "int8" in files:
        sessions[SIMULATED_ROW] = cpu_session(files["int8"], threads, arithmetic=SIMULATED)
    name = {k: s.get_inputs()[0].name for k, s in sessions.items()}
    for _ in range(warmup):
        for k, s in sessions.items():
            s.run(None, {name[k]: x})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(iters):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {name[k]: x})
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: _stats(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="FP32 ONNX from trt-export")
    p.add_argument("--fp16", help="FP16 file (default: made from MODEL)")
    p.add_argument("--int8", help="INT8 file (default: made from MODEL with --calib)")
    p.add_argument("--calib", default="demo", help="calibration set for a made INT8 file (default demo)")
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--method", default="minmax")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)

    src = Path(args.model)
    spec = read_spec(src)
    with tempfile.TemporaryDirectory(prefix="retinanet_trt.bench.") as tmp:
        files = {"fp32": src}
        made: dict[str, Any] = {}
        for prec, given in (("fp16", args.fp16), ("int8", args.int8)):
            if given:
                files[prec] = Path(given)
                continue
            out = Path(tmp) / f"model.{prec}.onnx"
            opts = ConvertOptions(calib=args.calib if prec == "int8" else None, calib_images=args.calib_images,
                                  method=args.method, evaluate_map=False, progress=False)
            report = convert(src, prec, out, opts)
            made[prec] = {"worst_sqnr_db": min(report["sqnr_db"].values()), "sqnr_arithmetic": report["arithmetic"],
                          "lint_passed": report["lint"]["passed"]}
            files[prec] = out
        import onnx

        dims = onnx.load(str(src), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        static = [d.dim_value or None for d in dims]
        input_hw = (static[2], static[3]) if static[2] and static[3] else None
        inputs, names, _ = held_out_inputs(spec, input_hw, static[0] or 1)
        x = inputs[0]
        results = measure(files, x, args.threads, args.warmup, args.iters)
        sizes = {k: os.path.getsize(v) for k, v in files.items()}
    base = results["fp32"]["median_ms"]
    record = {
        "benchmark": "precision_latency",
        "model": {"file": str(src), "name": spec.name, "input_shape": list(x.shape), "image": names[0]},
        "backend": "onnxruntime CPUExecutionProvider",
        "arithmetic": {k: ARITHMETIC_LABELS[SIMULATED if k == SIMULATED_ROW else FUSED] for k in results},
        "threads": args.threads, "warmup": args.warmup, "iters": args.iters,
        "results": results,
        "ratio_to_fp32_median": {k: v["median_ms"] / base for k, v in results.items()},
        "file_bytes": sizes,
        "made_here": made,
        "versions": {**package_versions(), "processor": platform.processor() or platform.machine()},
        "cpu_flags": cpu_flags(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    from retinanet_trt.tables import format_table

    print(f"{spec.name} {list(x.shape)} ORT CPU, {args.threads} threads, {args.iters} iterations (interleaved); "
          f"rows: {ARITHMETIC_LABELS[FUSED]}, except '{SIMULATED_ROW}': {ARITHMETIC_LABELS[SIMULATED]}")
    print(format_table(["precision", "median ms", "p90 ms", "p99 ms", "x fp32"],
                       [[k, v["median_ms"], v["p90_ms"], v["p99_ms"], f"{v['median_ms'] / base:.2f}"] for k, v in results.items()]))
    if args.json:
        from retinanet_trt.fileio import write_json_atomic

        write_json_atomic(args.json, record)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
