"""Regenerate the trt-calib reports behind docs/precision.md (benchmarks/results/precision_*).

    python benchmarks/precision_reports.py demo     # precision_demo_{int8,fp16,static_int8,static_fp16}.*, _methods.json
    python benchmarks/precision_reports.py r50      # precision_r50_random_{int8,fp16,int8_sensitivity}.*

Each report is one `trt-calib` command on a freshly exported model (benchmarks/precision_models.py),
run in a scratch folder with relative paths; its --json report and its printed tables (.txt) are
copied to the results folder. Scores are in the arithmetic every report names (simulated Q/DQ:
ONNX Runtime CPU with graph optimisations off), so they do not depend on the CPU; the JSON
carries versions and the CPU model, and this script adds the CPU flags.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision_models import DESCRIBE, export_model  # noqa: E402

from retinanet_trt.fileio import write_bytes_atomic, write_json_atomic  # noqa: E402
from retinanet_trt.versions import cpu_flags, package_versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# name -> (model, trt-calib arguments after MODEL); `name` is the results file stem, None: not kept.
JOBS: dict[str, list[tuple[str | None, str, list[str]]]] = {
    "demo": [
        ("precision_demo_int8", "demo-dynamic", ["--int8", "--calib", "demo", "--sensitivity"]),
        ("precision_demo_fp16", "demo-dynamic", ["--fp16", "--calib", "demo"]),
        ("precision_demo_static_int8", "demo", ["--int8", "--calib", "demo", "--eval-images", "300"]),
        ("precision_demo_static_fp16", "demo", ["--fp16", "--calib", "demo", "--eval-images", "300"]),
        (None, "demo-dynamic", ["--int8", "--calib", "demo", "--eval-images", "300", "--method", "minmax"]),
        (None, "demo-dynamic", ["--int8", "--calib", "demo", "--eval-images", "300", "--method", "percentile"]),
        (None, "demo-dynamic", ["--int8", "--calib", "demo", "--eval-images", "300", "--method", "entropy"]),
        (None, "demo-dynamic", ["--fp16", "--calib", "demo", "--eval-images", "300"]),
    ],
    "r50": [
        ("precision_r50_random_int8", "r50", ["--int8", "--calib", "demo", "--no-map", "--cache", "r50.int8.64.calib.json"]),
        # FP16 takes its overflow check from the same ranges
        ("precision_r50_random_fp16", "r50", ["--fp16", "--calib", "demo", "--no-map", "--cache", "r50.int8.64.calib.json"]),
        ("precision_r50_random_int8_sensitivity", "r50", ["--int8", "--calib", "demo", "--calib-images", "32", "--no-map",
                                                          "--sensitivity"]),
    ],
}


def run_job(model: str, args: list[str], work: Path, index: int) -> tuple[dict[str, Any], str]:
    """One trt-calib command in `work`: (report, printed text)."""
    precision = "int8" if "--int8" in args else "fp16"
    out, report = f"{model}.{index}.{precision}.onnx", f"{model}.{index}.{precision}.report.json"
    cmd = [sys.executable, "-m", "retinanet_trt.cli.calib", f"{model}.onnx", *args, "--quiet", "-o", out, "--json", report]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    text = f"$ trt-calib {model}.onnx {' '.join(args)} --quiet -o {out} --json {report}\n" + proc.stdout
    return json.loads((work / report).read_text()), text


def methods_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """precision_demo_methods.json: mAP and per-level SQNR by precision and calibration method."""
    results: dict[str, Any] = {}
    for r in runs:
        prec = r["precision"]
        name = f"int8 {r['calibration']['method']}" if prec == "int8" else "fp16"
        d = r["map_detail"]
        results[name] = {"map_fp32": r["map"]["fp32"], "map": r["map"][prec], "delta": d["delta"],
                         "ap50": d[prec]["AP50"], "ap50_fp32": d["fp32"]["AP50"],
                         "worst_sqnr_db": min(r["sqnr_db"].values()), "levels": r["levels"],
                         "calibrate_s": r["times_s"].get("calibrate_s")}
    first = runs[0]
    return {
        "benchmark": "demo model: COCO mAP and per-level SQNR by precision and calibration method",
        "model": DESCRIBE["demo-dynamic"],
        "calibration": {"set": "demo (synthetic 'calib' split, seed 0)", "images": first["calibration"]["images_used"]},
        "evaluation": {"set": first["map_detail"]["set"], "images": first["map_detail"]["images"],
                       "metric": first["map_detail"]["metric"]},
        "arithmetic": first["arithmetic"],
        "held_out_sqnr": f"{len(first['held_out']['photos'])} scikit-image photos",
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", choices=tuple(JOBS))
    p.add_argument("--results", type=Path, default=RESULTS, help="folder to write into (default benchmarks/results)")
    args = p.parse_args(argv)
    extra = {"cpu_flags": cpu_flags(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    with tempfile.TemporaryDirectory(prefix="retinanet_trt.precision.") as tmp:
        work = Path(tmp)
        exported: set[str] = set()
        methods: list[dict[str, Any]] = []
        for index, (name, model, job_args) in enumerate(JOBS[args.suite]):
            if model not in exported:
                export_model(model, work)
                exported.add(model)
            t0 = time.perf_counter()
            report, text = run_job(model, job_args, work, index)
            print(f"{name or 'methods'}: {' '.join(job_args)}: worst SQNR {min(report['sqnr_db'].values()):.1f} dB"
                  + (f", mAP {report['map']}" if "map" in report else "") + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
            if name is None:
                methods.append(report)
                continue
            write_json_atomic(args.results / f"{name}.json", {**report, **extra})
            write_bytes_atomic(args.results / f"{name}.txt", text.encode())
        if methods:
            write_json_atomic(args.results / "precision_demo_methods.json",
                              {**methods_summary(methods), "versions": package_versions(), **extra})
    return 0


if __name__ == "__main__":
    sys.exit(main())
