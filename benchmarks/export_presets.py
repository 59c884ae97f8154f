"""Export every preset with random weights (static, and dynamic with parity at three sizes) and
record the worst max_rel against PyTorch, the time per step and the peak memory of each export.

    python benchmarks/export_presets.py --json benchmarks/results/export_presets.json

Each export runs in its own process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PRESETS = ["retinanet_r50_fpn", "torchvision_v1", "torchvision_v2", "r50_fpn1024_1class", "tiny"]


def run_one(preset: str, dynamic: bool, input_hw: tuple[int, int], tmp: Path) -> dict:
    out, rep = tmp / f"{preset}.onnx", tmp / f"{preset}.json"
    cmd = [sys.executable, "-m", "retinanet_trt.cli.export", "--preset", preset, "--random-init", "--input-size",
           str(input_hw[0]), str(input_hw[1]), "-o", str(out), "--json", str(rep), "--quiet"]
    if dynamic:
        cmd.append("--dynamic")
    subprocess.run(cmd, check=True, capture_output=True)
    r = json.loads(rep.read_text())
    shapes = r["parity"][0]["input_hw"]
    return {
        "preset": preset, "dynamic": dynamic, "input_hw": list(input_hw),
        "parity_sizes": [run["input_hw"] for run in r["parity"]], "worst_max_rel": r["worst_max_rel"],
        "worst_output": r["worst_output"], "passed": r["passed"], "times_s": r["times_s"],
        "total_s": round(sum(r["times_s"].values()), 2), "peak_rss_mb": r["peak_rss_mb"],
        "ceil_mode_pools_rewritten": r["fixes"]["ceil_mode_pools_rewritten"], "checks": r["checks"],
        "first_size": shapes, "versions": r["versions"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--input-size", type=int, nargs=2, default=[480, 640])
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in PRESETS:
            for dynamic in (False, True):
                row = run_one(preset, dynamic, tuple(args.input_size), Path(tmp))
                rows.append(row)
                print(f"{preset:20s} dynamic={dynamic!s:5s} max_rel {row['worst_max_rel']:.2e} "
                      f"total {row['total_s']:6.1f} s  peak {row['peak_rss_mb']:7.0f} MB  sizes {row['parity_sizes']}",
                      flush=True)
    args.json.write_text(json.dumps({"runs": rows, "machine": "2-core CPU, no GPU (shared with other jobs)"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
