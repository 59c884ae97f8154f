"""The same `trt-calib --int8` command run twice: first run vs rerun (ranges and report from the caches).

    python benchmarks/calib_rerun.py demo --json benchmarks/results/precision_cache_reuse_demo.json
    python benchmarks/calib_rerun.py r50 --no-map-only --json benchmarks/results/precision_cache_reuse_r50_random.json

The model is exported fresh (benchmarks/precision_models.py) into an empty folder, so the first
run starts with no caches. Each pair is the command run twice in a row in its own process, so
the wall time includes start-up; the reports' times_s give the same split inside the process.
A pair with mAP (the default of trt-calib) and one with --no-map are recorded for each model
unless --no-map-only. Recorded: wall and in-process seconds of both runs, their ratio, the
reuse flags, whether the two reports hold the same scores, versions, CPU model and flags.
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
from precision_models import DESCRIBE, MODELS, export_model  # noqa: E402

from retinanet_trt.fileio import write_json_atomic  # noqa: E402
from retinanet_trt.versions import cpu_flags, package_versions  # noqa: E402

SCORES = ("sqnr_db", "levels", "map", "sensitivity")


def run_pair(model: Path, work: Path, label: str, extra: list[str]) -> dict[str, Any]:
    """The command twice; wall and report times of each run."""
    out = work / f"{label}.int8.onnx"
    runs, reports = [], []
    for i in (1, 2):
        report_path = work / f"{label}.run{i}.json"
        cmd = [sys.executable, "-m", "retinanet_trt.cli.calib", str(model), "--int8", "--calib", "demo",
               "--quiet", "-o", str(out), "--json", str(report_path), *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        r = json.loads(report_path.read_text())
        reports.append(r)
        runs.append({"wall_s": round(wall, 3), "ranges_reused": r["cache"]["reused"],
                     "report_reused": r["cache"].get("report_reused", False),
                     "output_reused": r["cache"].get("output_reused", False), "times_s": r["times_s"],
                     "printed": [line for line in proc.stdout.splitlines() if line.startswith(("cache:", "scores:"))]})
    first, rerun = runs
    return {
        "command": "trt-calib MODEL --int8 --calib demo --quiet -o OUT --json R " + " ".join(extra) + " (twice)",
        "runs": runs,
        "speedup_wall": first["wall_s"] / rerun["wall_s"],
        "speedup_in_process": first["times_s"]["total_s"] / rerun["times_s"]["total_s"],
        "same_scores": all(reports[0].get(k) == reports[1].get(k) for k in SCORES),
        "arithmetic": reports[0]["arithmetic"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=MODELS)
    p.add_argument("--calib-images", type=int, default=64)
    p.add_argument("--no-map-only", action="store_true", help="record only the --no-map pair (R50: mAP of random weights is 0)")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    record: dict[str, Any] = {
        "benchmark": "trt-calib rerun: first run vs the same command again (ranges and accuracy report from the caches)",
        "model": DESCRIBE[args.model], "calib_images": args.calib_images, "method": "minmax", "pairs": {},
    }
    with tempfile.TemporaryDirectory(prefix="retinanet_trt.rerun.") as tmp:
        work = Path(tmp)
        model = export_model(args.model, work)
        base = ["--calib-images", str(args.calib_images)]
        pairs = {"no_map": base + ["--no-map"]} if args.no_map_only else {"with_map_100_images": base, "no_map": base + ["--no-map"]}
        for label, extra in pairs.items():
            record["pairs"][label] = pair = run_pair(model, work, label, extra)
            print(f"{args.model} {label}: first {pair['runs'][0]['wall_s']:.2f} s, rerun {pair['runs'][1]['wall_s']:.2f} s wall "
                  f"({pair['speedup_wall']:.1f}x; in process {pair['runs'][0]['times_s']['total_s']:.2f} -> "
                  f"{pair['runs'][1]['times_s']['total_s']:.2f} s, {pair['speedup_in_process']:.1f}x), "
                  f"same scores: {pair['same_scores']}")
    record["versions"] = package_versions()
    record["cpu_flags"] = cpu_flags()
    record["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if args.json:
        write_json_atomic(args.json, record)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
