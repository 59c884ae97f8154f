"""trt-calib's accuracy budget on the demo model: --max-drop with each range method, in one run.

    python benchmarks/precision_budget.py --json benchmarks/results/precision_budget_demo.json
    python benchmarks/precision_budget.py --methods entropy --keep-as fp16 \
        --json benchmarks/results/precision_budget_demo_keep_fp16.json

The demo model is exported fresh (benchmarks/precision_models.py: static 1x3x256x320). For each
method, `trt-calib demo.onnx --int8 --calib demo --method M --eval-images 300 --max-drop 0.001`
(a 0.1-point COCO AP budget) runs in its own process with an empty cache folder. Recorded per
method: plain INT8's and the kept file's held-out mAP and drop (300 images of the `val` split,
simulated Q/DQ), whether the budget was met, the layers kept (in FP32, or FP16 with --keep-as fp16)
with their latency class and
share of the MACs, every file the search measured, the times (search and whole run), trt-calib's
exit status (3: budget not met) and its printed report (.txt beside the JSON).
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
from precision_models import DESCRIBE, export_model  # noqa: E402

from retinanet_trt.fileio import write_bytes_atomic, write_json_atomic  # noqa: E402
from retinanet_trt.versions import cpu_flags, package_versions  # noqa: E402


def run_method(model: Path, work: Path, method: str, max_drop: float, eval_images: int,
               keep_as: str) -> tuple[dict[str, Any], str]:
    """One budgeted trt-calib run: (summary, printed report)."""
    out, report = work / f"{method}.int8.onnx", work / f"{method}.report.json"
    cmd = [sys.executable, "-m", "retinanet_trt.cli.calib", str(model), "--int8", "--calib", "demo", "--method", method,
           "--eval-images", str(eval_images), "--max-drop", str(max_drop), "--keep-as", keep_as, "--quiet", "-o", str(out), "--json", str(report)]
    env = {**os.environ, "RETINANET_TRT_CACHE_DIR": str(work / f"cache-{method}")}  # no caches from earlier runs
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    r = json.loads(report.read_text())
    b = r["budget"]
    summary = {
        "command": " ".join(["trt-calib", "MODEL", *cmd[4:]]).replace(str(work) + "/", ""),
        "exit_status": proc.returncode, "met": b["met"], "fp32_map": b["fp32_map"],
        "plain": b["plain"], "final": b["final"], "report_map": r["map"], "report_delta": r["map_detail"]["delta"],
        "kept": [{k: row[k] for k in ("layer", "group", "latency_class", "macs_share", "sensitivity_rank")}
                 for row in b["kept"]],
        "kept_macs_share": b["kept_macs_share"], "layers_ranked": len(b["ranking"]),
        "ranking_measure": b.get("ranking_measure"), "steps": b["steps"], "note": b.get("note"),
        "arithmetic": b["arithmetic"], "evaluation": b["evaluation"],
        "search_s": round(b["search_s"], 1), "total_s": round(r["times_s"]["total_s"], 1), "wall_s": round(wall, 1),
    }
    return summary, proc.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["entropy", "percentile", "max"])
    p.add_argument("--max-drop", type=float, default=0.001)
    p.add_argument("--eval-images", type=int, default=300)
    p.add_argument("--keep-as", choices=["fp32", "fp16"], default="fp32", help="what the kept layers compute in")
    p.add_argument("--json", help="write the result here (and the printed reports beside it, .txt)")
    args = p.parse_args(argv)
    record: dict[str, Any] = {
        "benchmark": f"trt-calib --int8 --max-drop: the fewest layers kept in {args.keep_as.upper()} that meet a COCO AP budget",
        "model": DESCRIBE["demo"], "max_drop": args.max_drop, "keep_as": args.keep_as, "eval_images": args.eval_images, "methods": {},
    }
    texts = []
    with tempfile.TemporaryDirectory(prefix="retinanet_trt.budget.") as tmp:
        work = Path(tmp)
        model = export_model("demo", work)
        for method in args.methods:
            summary, text = run_method(model, work, method, args.max_drop, args.eval_images, args.keep_as)
            record["methods"][method] = summary
            texts.append(f"$ {summary['command']}\n{text}")
            kept = summary["kept"]
            print(f"{method}: plain drop {100 * summary['plain']['drop']:.2f} pt -> {100 * summary['final']['drop']:.2f} pt "
                  f"with {len(kept)} layer(s) in {args.keep_as.upper()} ({100 * summary['kept_macs_share']:.1f}% of the MACs), "
                  f"met: {summary['met']}, {summary['wall_s']:.0f} s", flush=True)
    record["versions"] = package_versions()
    record["cpu_flags"] = cpu_flags()
    record["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if args.json:
        write_json_atomic(args.json, record)
        write_bytes_atomic(Path(args.json).with_suffix(".txt"), "\n".join(texts).encode())
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
