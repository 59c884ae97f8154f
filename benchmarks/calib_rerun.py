"""The same `trt-calib --int8` command run three times: first run, rerun to the same output, rerun to another output.

    python benchmarks/calib_rerun.py demo --json benchmarks/results/precision_cache_reuse_demo.json
    python benchmarks/calib_rerun.py r50 --no-map-only --json benchmarks/results/precision_cache_reuse_r50_random.json

The model is exported fresh (benchmarks/precision_models.py) into an empty folder, and each triple
gets an empty cache folder of its own ($RETINANET_TRT_CACHE_DIR), so the first run starts with no
caches. Then the same command runs again with the same -o (the output is left as it is), then
with -o in another folder under another name (the output's name is no input: the ranges and the
report come from the content-addressed cache, and only the file is written again). Each run is
its own process, so the wall time includes start-up; the reports' times_s give the split inside
the process. A triple with mAP (the default of trt-calib) and one with --no-map are recorded for
each model unless --no-map-only. Recorded: wall and in-process seconds of the runs, the speed-up
of each rerun over the first, the reuse flags, whether the reports hold the same scores, whether
the two outputs have the same bytes, versions, CPU model and flags.
"""

from __future__ import annotations

import argparse
import json
import os
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


def run_triple(model: Path, work: Path, label: str, extra: list[str]) -> dict[str, Any]:
    """The command three times (first, same -o, another -o); wall and report times of each run."""
    same = work / f"{label}.int8.onnx"
    other_dir = work / f"{label}-elsewhere"
    other_dir.mkdir()
    other = other_dir / "renamed.onnx"
    env = {**os.environ, "RETINANET_TRT_CACHE_DIR": str(work / f"cache-{label}")}
    runs, reports = [], []
    for i, out in enumerate((same, same, other), start=1):
        report_path = work / f"{label}.run{i}.json"
        cmd = [sys.executable, "-m", "retinanet_trt.cli.calib", str(model), "--int8", "--calib", "demo",
               "--quiet", "-o", str(out), "--json", str(report_path), *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        r = json.loads(report_path.read_text())
        reports.append(r)
        runs.append({"output": "first" if i == 1 else "same -o" if i == 2 else "another -o (other folder and name)",
                     "wall_s": round(wall, 3), "ranges_reused": r["cache"]["reused"],
                     "report_reused": r["cache"].get("report_reused", False),
                     "output_reused": r["cache"].get("output_reused", False), "times_s": r["times_s"],
                     "printed": [line for line in proc.stdout.splitlines() if line.startswith(("cache:", "scores:"))]})
    first = runs[0]
    return {
        "command": "trt-calib MODEL --int8 --calib demo --quiet -o OUT --json R " + " ".join(extra)
                   + " (three times: OUT, OUT again, then another folder and name)",
        "runs": runs,
        "speedup_wall_same_output": first["wall_s"] / runs[1]["wall_s"],
        "speedup_wall_another_output": first["wall_s"] / runs[2]["wall_s"],
        "speedup_in_process_same_output": first["times_s"]["total_s"] / runs[1]["times_s"]["total_s"],
        "speedup_in_process_another_output": first["times_s"]["total_s"] / runs[2]["times_s"]["total_s"],
        "same_scores": all(reports[0].get(k) == r.get(k) for r in reports[1:] for k in SCORES),
        "same_output_bytes": same.read_bytes() == other.read_bytes(),
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
        "benchmark": "trt-calib rerun: first run vs the same command again, to the same output and to another one "
                     "(ranges and accuracy report from the content-addressed cache)",
        "model": DESCRIBE[args.model], "calib_images": args.calib_images, "method": "minmax", "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="retinanet_trt.rerun.") as tmp:
        work = Path(tmp)
        model = export_model(args.model, work)
        base = ["--calib-images", str(args.calib_images)]
        pairs = {"no_map": base + ["--no-map"]} if args.no_map_only else {"with_map_100_images": base, "no_map": base + ["--no-map"]}
        for label, extra in pairs.items():
            record["runs"][label] = t = run_triple(model, work, label, extra)
            first, same, other = t["runs"]
            print(f"{args.model} {label}: first {first['wall_s']:.2f} s, same -o {same['wall_s']:.2f} s "
                  f"({t['speedup_wall_same_output']:.1f}x), another -o {other['wall_s']:.2f} s "
                  f"({t['speedup_wall_another_output']:.1f}x) wall; in process {first['times_s']['total_s']:.2f} / "
                  f"{same['times_s']['total_s']:.2f} / {other['times_s']['total_s']:.2f} s; same scores: {t['same_scores']}, "
                  f"same bytes: {t['same_output_bytes']}")
    record["versions"] = package_versions()
    record["cpu_flags"] = cpu_flags()
    record["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if args.json:
        write_json_atomic(args.json, record)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
