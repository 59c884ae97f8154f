"""Reproduce benchmarks/results/bench_r50_cpu.{json,png}: PyTorch vs ONNX Runtime on the CPU, by part and
per FPN level, for retinanet_r50_fpn (random weights, seed 0) at 480x640.

    python benchmarks/bench_cpu.py                       # writes benchmarks/results/bench_r50_cpu.*
    python benchmarks/bench_cpu.py --threads 2 --iterations 50 --out /tmp/r50

One thread by default: on a small machine shared with other jobs, PyTorch's two OpenMP threads
wait on each other whenever one is preempted (the tiny model's compute median was about 20x
longer with two threads than with one on the loaded 2-core machine), which would turn the
PyTorch/ORT ratio into a measure of the machine's load.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from retinanet_trt.cli import bench, export

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="retinanet_r50_fpn")
    p.add_argument("--input-size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "bench_r50_cpu", help="path prefix of the .json and .png")
    args = p.parse_args(argv)
    h, w = args.input_size
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        onnx_path = str(Path(tmp) / f"{args.preset}_{h}x{w}.onnx")
        rc = export.main(["--preset", args.preset, "--random-init", "--seed", "0", "--input-size", str(h), str(w),
                          "-o", onnx_path, "--quiet"])
        if rc:
            return rc
        return bench.main([onnx_path, "--compare", "torch,ort-cpu", "--warmup", str(args.warmup),
                           "--iterations", str(args.iterations), "--threads", str(args.threads),
                           "--json", f"{args.out}.json", "--plot", f"{args.out}.png"])


if __name__ == "__main__":
    sys.exit(main())
