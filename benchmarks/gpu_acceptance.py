"""GPU acceptance: FP32 / FP16 / INT8 TensorRT engines of the demo model and retinanet_r50_fpn, checked and timed.

Needs an NVIDIA GPU with TensorRT and cuda-python (docs/tensorrt.md says how, on x86 and Jetson):

    python benchmarks/gpu_acceptance.py                                   # both models, all precisions
    python benchmarks/gpu_acceptance.py --models demo --precisions fp16,int8 --iterations 100
    python benchmarks/gpu_acceptance.py --r50-checkpoint model_final.pkl --r50-source detectron2 \\
        --coco-images coco/val2017 --coco-annotations coco/annotations/instances_val2017.json

For each model and precision, in one run on one machine:
  1. export the FP32 ONNX (trt-export) and build the engine (trt-build, which first writes the
     FP16 / INT8 ONNX through retinanet_trt.calib), with a shared timing cache;
  2. parity of every raw output, and per FPN level, on the held-out photos: the engine against
     ONNX Runtime FP32 (what the precision costs), and against ONNX Runtime running the same
     precision ONNX (whether TensorRT computes what the file says);
  3. COCO mAP (trt-eval): the demo model on a generated synthetic val split; R50 only with a
     trained checkpoint and a COCO set, since random weights have no meaningful mAP;
  4. latency of the engine: GPU compute, H2D and D2H from CUDA events (median, p90, p99), without
     and with CUDA graph replay; and trtexec's GPU compute time on the same precision ONNX and on
     our engine, when trtexec is on PATH.
Results go to benchmarks/results/gpu_acceptance_<gpu>_trt<version>.json and .png; the exit
status is 0 when every check passes, 1 when one fails, 2 without TensorRT or a GPU.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from retinanet_trt.bench import summarize
from retinanet_trt.fileio import write_json_atomic
from retinanet_trt.tensorrt.build import sidecar_path
from retinanet_trt.tensorrt.engine import available
from retinanet_trt.versions import package_versions

RESULTS = Path(__file__).resolve().parent / "results"
PRECISIONS = ("fp32", "fp16", "int8")
MODELS = ("demo", "r50")
# TensorRT must compute what the ONNX file says: against ONNX Runtime on the same file, small
# differences come only from TF32 / FP16 accumulation order and INT8 rounding inside fused kernels.
MIN_SQNR_SAME_ONNX_DB = {"fp32": 40.0, "fp16": 30.0, "int8": 20.0}
# What each precision may cost in COCO AP (fractions) against ONNX Runtime FP32; the same bars as
# the calib issue sets for the ONNX files (FP16 0.5 point, INT8 1.0 point), FP32 only noise.
MAX_AP_DROP = {"fp32": 0.005, "fp16": 0.005, "int8": 0.010}


# ---------------------------------------------------------------------------------------- steps
def _cli(main: Any, args: list[str], what: str) -> None:
    """Run one of the project's CLIs in-process; a non-zero status stops this model/precision."""
    code = main(args)
    if code != 0:
        raise RuntimeError(f"{what} exited with status {code}: {' '.join(args)}")


def export_model(model: str, out: Path, args: argparse.Namespace) -> None:
    from retinanet_trt.cli.export import main as export_main

    if model == "demo":
        _cli(export_main, ["--demo", "-o", str(out), "--quiet"], "trt-export")
    elif args.r50_checkpoint:
        _cli(export_main, [str(args.r50_checkpoint), "--source", args.r50_source, "-o", str(out), "--quiet"], "trt-export")
    else:
        # The spec's own input size (800x1344, padded): the size published RetinaNet latencies use.
        _cli(export_main, ["--preset", "retinanet_r50_fpn", "--random-init", "-o", str(out), "--quiet"], "trt-export")


def build(onnx: Path, precision: str, engine: Path, args: argparse.Namespace) -> dict[str, Any]:
    from retinanet_trt.cli.build import main as build_main

    flags = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--calib", args.calib_set,
                                                     "--calib-images", str(args.calib_images)]}[precision]
    _cli(build_main, [str(onnx), *flags, "-o", str(engine), "--timing-cache", str(engine.parent / "timing.cache")],
         "trt-build")
    return json.loads(sidecar_path(engine).read_text())


def parity(engine: Path, fp32_onnx: Path, precision_onnx: Path) -> dict[str, Any]:
    """The engine's raw outputs on the held-out photos against ONNX Runtime, per output and per level."""
    from retinanet_trt.calib import accuracy
    from retinanet_trt.runtime.backends.trt_backend import TrtBackend

    backend = TrtBackend(engine)
    try:
        inputs, photos, shrunk = accuracy.held_out_inputs(backend.spec, backend.fixed_input_hw)
        ours = [backend.run(x) for x in inputs]
    finally:
        backend.close()
    report: dict[str, Any] = {"photos": photos, "shrunk_to_input": shrunk}
    for key, onnx in (("vs_ort_fp32", fp32_onnx), ("vs_ort_same_onnx", precision_onnx)):
        cmp = accuracy.compare_runs(accuracy.run_all(accuracy.session(onnx), inputs), ours)
        report[key] = {"outputs": cmp, "levels": accuracy.level_rows(cmp), "worst_sqnr_db": accuracy.worst_sqnr(cmp)}
    return report


def coco_ap(model_file: Path, backend: str, json_out: Path, args: argparse.Namespace, on_demo: bool) -> float:
    from retinanet_trt.cli.eval import main as eval_main

    if on_demo:
        data = ["--demo", "--demo-images", str(args.demo_images), "--seed", "1"]
    else:
        data = ["--images", str(args.coco_images), "--annotations", str(args.coco_annotations)]
        if args.coco_max_images:
            data += ["--max-images", str(args.coco_max_images)]
    _cli(eval_main, [str(model_file), *data, "--backend", backend, "--json", str(json_out)], "trt-eval")
    return float(json.loads(json_out.read_text())["AP"])


def latency(engine: Path, *, cuda_graph: bool, warmup: int, iterations: int) -> dict[str, Any]:
    """Stage times of repeated runs on one held-out photo (same input every iteration)."""
    from retinanet_trt.calib import accuracy
    from retinanet_trt.runtime.backends.trt_backend import TrtBackend

    backend = TrtBackend(engine, cuda_graph=cuda_graph)
    try:
        x = accuracy.held_out_inputs(backend.spec, backend.fixed_input_hw)[0][0]
        for _ in range(warmup):
            backend.run(x)
        rows, wall = [], []
        for _ in range(iterations):
            t0 = time.perf_counter()
            backend.run(x)
            wall.append((time.perf_counter() - t0) * 1e3)
            rows.append(backend.last_times)
    finally:
        backend.close()
    return {
        "input_shape": list(x.shape),
        "compute_ms": summarize([t.compute_ms for t in rows]),
        "h2d_ms": summarize([t.h2d_ms for t in rows]),
        "d2h_ms": summarize([t.d2h_ms for t in rows]),
        "run_ms": summarize(wall),  # host view of one run: staging, copies, execute, synchronize
    }


def find_trtexec() -> str | None:
    # JetPack installs trtexec outside PATH.
    return shutil.which("trtexec") or next(
        (p for p in ("/usr/src/tensorrt/bin/trtexec",) if Path(p).is_file()), None
    )


def trtexec(exe: str, target: Path, *, engine: bool, iterations: int) -> dict[str, Any]:
    """trtexec's GPU compute time (CUDA graph replay, like our fastest mode) on an ONNX file or an engine."""
    cmd = [exe, f"--loadEngine={target}" if engine else f"--onnx={target}", "--useCudaGraph",
           f"--iterations={iterations}", "--warmUp=500", "--duration=0"]
    if not engine:
        cmd.append("--stronglyTyped")  # precision from the file, as trt-build does (a no-op on TensorRT 11)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    stats = parse_gpu_compute(done.stdout)
    if done.returncode != 0 or stats is None:
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        return {"command": " ".join(cmd), "error": " | ".join(tail) or f"exit status {done.returncode}"}
    return {"command": " ".join(cmd), "gpu_compute_ms": stats}


def parse_gpu_compute(stdout: str) -> dict[str, float] | None:
    """trtexec's summary line "GPU Compute Time: min = 1.2 ms, max = ..., median = ..., percentile(99%) = ... ms"."""
    line = next((ln for ln in stdout.splitlines() if "GPU Compute Time:" in ln), None)
    if line is None:
        return None
    return {name: float(value) for name, value in re.findall(r"([\w()%]+) = ([\d.]+) ms", line.split("GPU Compute Time:")[1])}


# ---------------------------------------------------------------------------------------- driver
def run_precision(model: str, precision: str, onnx: Path, work: Path, args: argparse.Namespace,
                  ref_ap: float | None, exe: str | None) -> dict[str, Any]:
    engine = work / f"{model}.{precision}.engine"
    result: dict[str, Any] = {"engine": engine.name}
    sidecar = build(onnx, precision, engine, args)
    result["build"] = {k: sidecar[k] for k in ("build_seconds", "engine_bytes", "tensorrt_version",
                                               "cuda_runtime_version", "gpu", "strongly_typed")}
    precision_onnx = onnx if precision == "fp32" else engine.with_suffix(".onnx")
    result["parity"] = parity(engine, onnx, precision_onnx)
    worst = result["parity"]["vs_ort_same_onnx"]["worst_sqnr_db"]
    result["checks"] = {"sqnr_same_onnx": worst >= MIN_SQNR_SAME_ONNX_DB[precision]}
    if ref_ap is not None:
        ap = coco_ap(engine, "trt", work / f"{model}.{precision}.eval.json", args, on_demo=model == "demo")
        result["map"] = {"AP": ap, "ort_fp32_AP": ref_ap, "drop": ref_ap - ap}
        result["checks"]["map"] = ref_ap - ap <= MAX_AP_DROP[precision]
    result["latency"] = {
        "ours": latency(engine, cuda_graph=False, warmup=args.warmup, iterations=args.iterations),
        "ours_cuda_graph": latency(engine, cuda_graph=True, warmup=args.warmup, iterations=args.iterations),
    }
    if exe:
        result["latency"]["trtexec_onnx"] = trtexec(exe, precision_onnx, engine=False, iterations=args.iterations)
        result["latency"]["trtexec_our_engine"] = trtexec(exe, engine, engine=True, iterations=args.iterations)
    return result


def run_model(model: str, work: Path, args: argparse.Namespace, exe: str | None) -> dict[str, Any]:
    onnx = work / f"{model}.onnx"
    export_model(model, onnx, args)
    report: dict[str, Any] = {"onnx": onnx.name, "engines": {}}
    on_coco = model == "r50" and args.r50_checkpoint and args.coco_images and args.coco_annotations
    ref_ap = None
    if model == "demo" or on_coco:
        ref_ap = coco_ap(onnx, "ort-cpu", work / f"{model}.ort_fp32.eval.json", args, on_demo=model == "demo")
    else:
        report["map_skipped"] = "random weights: give --r50-checkpoint with --coco-images/--coco-annotations"
    report["ort_fp32_AP"] = ref_ap
    for precision in args.precisions:
        print(f"[{model} {precision}] build, parity, mAP, latency ...", flush=True)
        try:
            report["engines"][precision] = run_precision(model, precision, onnx, work, args, ref_ap, exe)
        except Exception as exc:  # record and go on: one failing precision must not hide the others
            report["engines"][precision] = {"error": f"{type(exc).__name__}: {exc}", "checks": {"completed": False}}
    return report


def plot(results: dict[str, Any], path: Path) -> None:
    """Median GPU compute per engine (ours, ours + CUDA graph, trtexec) and worst SQNR per level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_sqnr) = plt.subplots(1, 2, figsize=(13, 4.8))
    labels: list[str] = []
    series: dict[str, list[float]] = {"ours": [], "ours + CUDA graph": [], "trtexec (same ONNX)": []}
    for model, rep in results["models"].items():
        for precision, eng in rep["engines"].items():
            if "latency" not in eng:
                continue
            labels.append(f"{model}\n{precision}")
            lat = eng["latency"]
            series["ours"].append(lat["ours"]["compute_ms"]["median"])
            series["ours + CUDA graph"].append(lat["ours_cuda_graph"]["compute_ms"]["median"])
            series["trtexec (same ONNX)"].append(lat.get("trtexec_onnx", {}).get("gpu_compute_ms", {}).get("median", np.nan))
            levels = eng["parity"]["vs_ort_fp32"]["levels"]
            ax_sqnr.plot([row["level"] for row in levels], [min(row["cls_sqnr_db"], row["box_sqnr_db"]) for row in levels],
                         marker="o", label=f"{model} {precision}")
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        ax_lat.bar(x + (i - 1) * 0.27, values, 0.27, label=name)
    ax_lat.set_xticks(x, labels)
    ax_lat.set_ylabel("GPU compute, median (ms)")
    ax_lat.set_title(f"{results['gpu']['name']}, TensorRT {results['tensorrt_version']}")
    ax_lat.legend()
    ax_sqnr.set_xlabel("FPN level")
    ax_sqnr.set_ylabel("worst of cls/box SQNR vs ONNX Runtime FP32 (dB)")
    ax_sqnr.set_title("parity per level")
    ax_sqnr.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma list of: demo, r50")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list of: fp32, fp16, int8")
    p.add_argument("--calib-set", default="demo", help="calibration set for INT8 (folder, COCO json or demo)")
    p.add_argument("--calib-images", type=int, default=64)
    p.add_argument("--demo-images", type=int, default=200, help="synthetic val images for the demo mAP")
    p.add_argument("--r50-checkpoint", type=Path, help="trained R50 checkpoint (default: random weights)")
    p.add_argument("--r50-source", default="auto", help="framework of --r50-checkpoint")
    p.add_argument("--coco-images", type=Path, help="COCO images folder, for the R50 mAP")
    p.add_argument("--coco-annotations", type=Path, help="COCO instances json, for the R50 mAP")
    p.add_argument("--coco-max-images", type=int, help="evaluate only the first N COCO images")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--no-trtexec", action="store_true", help="skip the trtexec comparison")
    p.add_argument("--work-dir", type=Path, help="keep ONNX files and engines here (default: a temporary folder)")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="where the JSON and PNG go")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.precisions = [q for q in args.precisions.split(",") if q]
    bad = [m for m in args.models if m not in MODELS] + [q for q in args.precisions if q not in PRECISIONS]
    if bad or not args.models or not args.precisions or args.iterations < 20:
        p.error(f"unknown or missing --models/--precisions {bad}, or --iterations below 20 (the protocol's minimum)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ok, why = available()
    if not ok:
        print(f"gpu_acceptance: needs TensorRT and a GPU: {why}", file=sys.stderr)
        return 2
    from retinanet_trt.tensorrt import cuda as cuda_rt
    from retinanet_trt.tensorrt import engine as trt_engine

    exe = None if args.no_trtexec else find_trtexec()
    results: dict[str, Any] = {
        "tensorrt_version": trt_engine.version(),
        "gpu": cuda_rt.device_info(0),
        "versions": package_versions(),
        "trtexec": exe,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "thresholds": {"min_sqnr_same_onnx_db": MIN_SQNR_SAME_ONNX_DB, "max_ap_drop": MAX_AP_DROP},
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu_acceptance_") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for model in args.models:
            results["models"][model] = run_model(model, work, args, exe)
    checks = [ok for rep in results["models"].values() for eng in rep["engines"].values() for ok in eng["checks"].values()]
    results["passed"] = bool(checks) and all(checks)

    slug = re.sub(r"[^a-z0-9]+", "-", results["gpu"]["name"].lower()).strip("-")
    stem = args.out_dir / f"gpu_acceptance_{slug}_trt{results['tensorrt_version']}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stem.with_suffix(".json"), results)
    plot(results, stem.with_suffix(".png"))
    for model, rep in results["models"].items():
        for precision, eng in rep["engines"].items():
            if "error" in eng:
                print(f"{model} {precision}: FAILED {eng['error']}")
                continue
            lat = eng["latency"]
            ap = f", AP {eng['map']['AP']:.4f} (ORT FP32 {eng['map']['ort_fp32_AP']:.4f})" if "map" in eng else ""
            print(f"{model} {precision}: compute {lat['ours']['compute_ms']['median']:.3f} ms "
                  f"({lat['ours_cuda_graph']['compute_ms']['median']:.3f} with CUDA graph), worst SQNR vs FP32 "
                  f"{eng['parity']['vs_ort_fp32']['worst_sqnr_db']:.1f} dB{ap}: "
                  f"{'pass' if all(eng['checks'].values()) else 'FAIL ' + str(eng['checks'])}")
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}: {'PASS' if results['passed'] else 'FAIL'}")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
