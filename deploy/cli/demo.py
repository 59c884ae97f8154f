"""The main job on the embedded default (`python3 run.py demo`): the whole pipeline on the bundled
demo model, each step through the same code as its command, with one report at the end.

Steps: export (parity vs PyTorch) -> generate a synthetic val split -> infer a few images ->
evaluate with the torch and ONNX Runtime backends -> FP16 and INT8 ONNX with their accuracy (when
calib/ is present) -> report (table + out/demo/report.json).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from retinanet_trt.cli.common import make_parser, run_main, seed
from retinanet_trt.demo import load_demo
from retinanet_trt.export.pipeline import ExportOptions, export_onnx
from retinanet_trt.fileio import write_json_atomic
from retinanet_trt.model.torch_backend import TorchBackend
from retinanet_trt.runtime.backends.ort_backend import OrtBackend
from retinanet_trt.runtime.detector import Detector
from retinanet_trt.scoring.evaluate import evaluate
from retinanet_trt.tables import format_table

EXAMPLES = "  python3 run.py demo\n  python3 run.py demo --val-images 200 -o out/demo\n"


def _step(name: str) -> float:
    print(f"\n== {name}", flush=True)
    return time.perf_counter()


def _main(argv: list[str] | None) -> int:
    p = make_parser("retinanet-trt demo", __doc__ or "", EXAMPLES)
    p.add_argument("-o", "--output", type=Path, dest="out", default=Path("out/demo"),
                   help="folder for every artifact (default out/demo)")
    p.add_argument("--out", type=Path, dest="out", help=argparse.SUPPRESS)  # the old name, for one release
    p.add_argument("--val-images", type=int, default=100, help="images in the generated val split (default 100)")
    p.add_argument("--seed", type=seed, default=1, help="seed of the generated val split")
    p.add_argument("--skip-precision", action="store_true", help="skip the FP16/INT8 step")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"steps_s": {}}

    t0 = _step("export the bundled demo model to ONNX (dynamic H/W/batch) and check it against PyTorch")
    spec, model = load_demo()
    onnx_path = args.out / "demo.onnx"
    export = export_onnx(model, spec, onnx_path, ExportOptions(input_hw=(256, 320), dynamic=True))
    for run in export["parity"]:
        rows = [[n, r["max_abs"], r["max_rel"], r["sqnr_db"]] for n, r in run["outputs"].items()]
        print(f"parity at {run['input_hw'][0]}x{run['input_hw'][1]}:")
        print(format_table(["output", "max_abs", "max_rel", "sqnr_db"], rows))
    report["export"] = {k: export[k] for k in ("worst_max_rel", "worst_output", "passed", "fixes", "times_s")}
    report["steps_s"]["export"] = time.perf_counter() - t0

    t0 = _step(f"generate {args.val_images} synthetic val images (seed {args.seed})")
    from retinanet_trt.demo.synthetic import generate_dataset

    annotations = generate_dataset(args.out / "data", args.val_images, args.seed, split="val")
    report["steps_s"]["data"] = time.perf_counter() - t0

    t0 = _step("infer 4 images with ONNX Runtime -> out/demo/infer")
    from retinanet_trt.cli import infer as infer_cli

    images = sorted((annotations.parent / "val").glob("*.png"))[:4]
    infer_cli.main([str(onnx_path), *map(str, images), "-o", str(args.out / "infer")])
    report["steps_s"]["infer"] = time.perf_counter() - t0

    t0 = _step("evaluate COCO AP with the torch and ONNX Runtime backends")
    detectors = {"torch": Detector(TorchBackend(model, spec)), "ort-cpu": Detector(OrtBackend(onnx_path, "ort-cpu"))}
    ap = {name: evaluate(det, annotations.parent, annotations, progress=sys.stderr.isatty())
          for name, det in detectors.items()}
    rows = [[name, s["AP"], s["AP50"], s["AP75"], s["APs"], s["APm"], s["APl"]] for name, s in ap.items()]
    print(format_table(["backend", "AP", "AP50", "AP75", "APs", "APm", "APl"], rows))
    report["map"] = {name: {k: s[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")} for name, s in ap.items()}
    report["map_torch_vs_ort_abs_diff"] = abs(ap["torch"]["AP"] - ap["ort-cpu"]["AP"])
    report["steps_s"]["evaluate"] = time.perf_counter() - t0

    if not args.skip_precision:
        from retinanet_trt.calib.convert import convert_precision

        t0 = _step("FP16 and INT8 ONNX (calibrated on generated images) and their accuracy")
        report["precision"] = {}
        for precision in ("fp16", "int8"):
            out = args.out / f"demo.{precision}.onnx"
            result = convert_precision(onnx_path, precision, out, calib="demo", calib_images=32, seed=0,
                                       cache=args.out / f"demo.{precision}.calib.json", method="max",
                                       progress=sys.stderr.isatty())
            report["precision"][precision] = {k: result.get(k) for k in ("map", "sqnr_db", "lint")}
        rows = []
        for precision, r in report["precision"].items():
            mean_ap = r.get("map") or {}
            x100 = {k: 100 * v for k, v in mean_ap.items()}  # fractions in the report, points for people
            rows.append([precision, x100.get("fp32", "-"), x100.get(precision, "-"),
                         min(r["sqnr_db"].values()) if r.get("sqnr_db") else "-", (r.get("lint") or {}).get("passed")])
        print(format_table(["precision", "mAP fp32 (x100)", "mAP (x100)", "min SQNR dB", "lint passed"], rows))
        report["steps_s"]["precision"] = time.perf_counter() - t0

    write_json_atomic(args.out / "report.json", report)
    print(f"\nreport: {args.out / 'report.json'}")
    print(format_table(["step", "seconds"], [[k, round(v, 1)] for k, v in report["steps_s"].items()]))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("retinanet-trt demo", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
