"""The host pipeline beside a SIMULATED fast GPU: R50 at 480x640 and 800x1344, float and uint8 input.

    python benchmarks/host_pipeline.py --out benchmarks/results/host_pipeline

For each size: `trt-export --preset retinanet_r50_fpn --random-init --input-size H W` with the float
input and with `--input-format uint8`, scikit-image photos saved as JPEG (decoded from disk on every
pass), then one `trt-bench --simulate-device 2 5 10 --uint8-model ...` run (deploy/bench/host_pipeline.py):
host ms per image by step, and trt-infer's images/s with the simulated device, overlap off and on,
against min(1000/MS, cores * 1000 / host ms per image). Writes <out>.json (both sizes) and <out>.txt.

The device is simulated (no GPU here): each batch sleeps MS ms with the GIL released and returns
outputs recorded from one real ONNX Runtime run. Nothing here measures accuracy.
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

from retinanet_trt.bench.host_pipeline import HostPipelineOptions, format_host_pipeline, run_host_pipeline, write_photos

BIN = Path(sys.executable).parent
SIZES = ((480, 640), (800, 1344))


def export(path: Path, hw: tuple[int, int], uint8: bool) -> None:
    cmd = [str(BIN / "trt-export"), "--preset", "retinanet_r50_fpn", "--random-init", "--input-size", str(hw[0]),
           str(hw[1]), "-o", str(path), "--quiet"]
    subprocess.run(cmd + (["--input-format", "uint8"] if uint8 else []), check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/host_pipeline"))
    ap.add_argument("--work", type=Path, help="keep the exported models here (default: a temporary folder)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--images-per-pass", type=int, default=24)
    ap.add_argument("--sizes", default="480x640,800x1344")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    reports, texts = [], []
    with tempfile.TemporaryDirectory(prefix="host_pipeline_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        photos = write_photos(work / "photos")
        for hw in sizes:
            models = {}
            for uint8 in (False, True):
                path = work / f"r50_{hw[0]}x{hw[1]}{'_uint8' if uint8 else ''}.onnx"
                if not path.exists():
                    export(path, hw, uint8)  # type: ignore[arg-type]
                models[uint8] = path
            opts = HostPipelineOptions(device_ms=(2.0, 5.0, 10.0), images=[str(p) for p in photos],
                                       images_per_pass=args.images_per_pass, rounds=args.rounds,
                                       uint8_model=str(models[True]))
            t0 = time.time()
            load0 = os.getloadavg()
            report = run_host_pipeline(str(models[False]), opts, log=lambda m: print(f"host_pipeline: {m}", file=sys.stderr))
            report["run"] = {"seconds": round(time.time() - t0, 1), "loadavg_before": load0, "loadavg_after": os.getloadavg(),
                             "command": f"trt-bench {models[False].name} --simulate-device 2 5 10 --uint8-model "
                                        f"{models[True].name} --images photos/ --iterations {args.rounds}"}
            text = format_host_pipeline(report)
            print(text, flush=True)
            reports.append(report)
            texts.append(text + f"\n(load average before/after: {load0[0]:.2f} / {os.getloadavg()[0]:.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"runs": reports}, indent=1) + "\n")
    args.out.with_suffix(".txt").write_text("\n\n".join(texts) + "\n")
    print(f"-> {args.out.with_suffix('.json')}, {args.out.with_suffix('.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
