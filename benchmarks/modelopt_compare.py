"""trt-calib's INT8 placement against NVIDIA ModelOpt's and ONNX Runtime's, on the same calibration tensors.

    python benchmarks/modelopt_compare.py                       # demo and r50: placements, mAP, SQNR
    python benchmarks/modelopt_compare.py --models demo --eval-images 300
    python benchmarks/modelopt_compare.py --fixture             # only tests/data/tiny_modelopt_int8.onnx
    python benchmarks/modelopt_compare.py --venv /some/dir      # ModelOpt's own environment (default below)

ModelOpt (`nvidia-modelopt[onnx]`, about 6.5 GB with onnxruntime-gpu, CUDA wheels and torch) is
installed into its own virtual environment, never the project's: by default
/work/.cache/modelopt-venv, created on first use with `pip install nvidia-modelopt[onnx]==0.47.0`.
It runs there in a subprocess with `calibration_eps=["cpu"]` (no GPU needed) and
`high_precision_dtype="fp32"` (so only INT8 differs from the FP32 model, as in trt-calib's files).

For each model (`demo`: `trt-export --demo`; `r50`: retinanet_r50_fpn, random weights, 480x640;
benchmarks/precision_models.py) the same calibration tensors (64 images of the `demo` set, seed 0,
pre-processed by the runner) feed every quantizer:

    trt-calib default      TensorRT placement (calib/placement.py), predictor convs FP32, max ranges
    trt-calib all-INT8     the same with the predictors quantized
    trt-calib ORT place.   the previous default: ONNX Runtime quantize_static's placement, predictors FP32
    ORT MinMax             ONNX Runtime quantize_static (QDQ, QInt8 symmetric, per channel, float bias)
    ModelOpt max           modelopt.onnx.quantization.quantize(calibration_method="max")
    ModelOpt max, excl.    the same with the predictor convs in nodes_to_exclude

Recorded in benchmarks/results/modelopt_compare_<model>.json: every Q/DQ site (node, input) where
trt-calib's default and ModelOpt's placements differ, each with its explanation (docs/precision.md),
the activation scales of the sites they share, the lint of every file, held-out SQNR per output on
the bundled photos and, for the demo, COCO mAP on `--eval-images` images of the `val` split, all in
simulated Q/DQ (the arithmetic every trt-calib report uses). modelopt_compare.txt is the table.

The test fixture tests/data/tiny_modelopt_int8.onnx (--fixture) is the `tiny` preset narrowed to
width 8 / FPN and head 16 (fixture_spec; random weights, seed 0, static 1x3x128x160, spec resize
128/160) quantized by ModelOpt max from 8 `demo` calibration images, made by

    python benchmarks/modelopt_compare.py --fixture

tests/test_calib_placement.py checks its placement differences.
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

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision_models import DESCRIBE, export_model  # noqa: E402

from retinanet_trt.calib import accuracy, int8, lint, placement, select, sets  # noqa: E402
from retinanet_trt.fileio import write_bytes_atomic, write_json_atomic  # noqa: E402
from retinanet_trt.runtime.backends.ort_backend import ACCURACY_ARITHMETIC, cpu_session  # noqa: E402
from retinanet_trt.spec.metadata import read_info, read_spec, set_metadata  # noqa: E402
from retinanet_trt.versions import package_versions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIXTURE = ROOT / "tests" / "data" / "tiny_modelopt_int8.onnx"
DEFAULT_VENV = Path(os.environ.get("MODELOPT_VENV", "/work/.cache/modelopt-venv"))
MODELOPT_REQUIREMENT = "nvidia-modelopt[onnx]==0.47.0"
MODELOPT_PACKAGES = ("nvidia-modelopt", "onnxruntime-gpu", "onnx", "onnx-graphsurgeon", "numpy")
ARITHMETIC = "simulated Q/DQ (ONNX Runtime CPU, graph optimisations off): quantize, dequantize, float compute"

_MODELOPT_RUNNER = r'''
import json, sys
import numpy as np
from modelopt.onnx.quantization import quantize
src, npz, out, exclude = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
quantize(src, quantize_mode="int8", calibration_data=dict(np.load(npz)), calibration_method="max",
         calibration_eps=["cpu"], high_precision_dtype="fp32", nodes_to_exclude=exclude or None,
         output_path=out, log_level="WARNING")
'''


# ------------------------------------------------------------------------------- ModelOpt venv

def ensure_modelopt(venv: Path) -> Path:
    """The ModelOpt environment's python, creating the venv and installing ModelOpt on first use."""
    python = venv / "bin" / "python"
    if python.is_file() and subprocess.run([str(python), "-c", "import modelopt.onnx.quantization"],
                                           capture_output=True).returncode == 0:
        return python
    if ROOT in venv.resolve().parents or venv.resolve() == Path(sys.prefix).resolve():
        raise SystemExit(f"--venv {venv}: ModelOpt gets its own environment, not one inside the project or its venv")
    print(f"installing {MODELOPT_REQUIREMENT} into {venv} (about 6.5 GB) ...", flush=True)
    base = getattr(sys, "_base_executable", None) or "python3"
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", MODELOPT_REQUIREMENT], check=True)
    return python


def modelopt_versions(python: Path) -> dict[str, str | None]:
    code = ("import json, importlib.metadata as m\n"
            "def v(p):\n    try:\n        return m.version(p)\n    except m.PackageNotFoundError:\n        return None\n"
            f"print(json.dumps({{p: v(p) for p in {list(MODELOPT_PACKAGES)!r}}}))")
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)


def run_modelopt(python: Path, src: Path, calib_npz: Path, out: Path, exclude: list[str]) -> float:
    """ModelOpt max INT8 of src from the tensors in calib_npz; seconds taken."""
    t0 = time.perf_counter()
    proc = subprocess.run([str(python), "-c", _MODELOPT_RUNNER, str(src), str(calib_npz), str(out), json.dumps(exclude)],
                          capture_output=True, text=True)
    if proc.returncode or not out.is_file():
        raise SystemExit(f"ModelOpt failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------- files

class _Reader:
    """ONNX Runtime CalibrationDataReader over fixed tensors, one per step."""

    def __init__(self, name: str, inputs: list[np.ndarray]) -> None:
        self._items = iter([{name: x} for x in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def ort_minmax(src: Path, out: Path, inputs: list[np.ndarray]) -> None:
    """ONNX Runtime's quantize_static as a TensorRT user runs it: QDQ, QInt8 symmetric activations
    and weights, per channel, no reduce_range, float biases (TensorRT rejects int32 bias DQ)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    quantize_static(str(src), str(out), _Reader(name, inputs), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})


def stamp(path: Path, src: Path) -> None:
    """Give a foreign quantizer's file the FP32 source's spec, so the runner's Detector can score it."""
    model = onnx.load(str(path))
    set_metadata(model, read_spec(src), {**read_info(src), "precision": "int8"})
    write_bytes_atomic(path, model.SerializeToString())


def scale_agreement(ours: onnx.ModelProto, theirs: onnx.ModelProto) -> dict[str, Any]:
    """Largest relative difference of the activation scales of tensors both files quantize."""
    def scales(model: onnx.ModelProto) -> dict[str, float]:
        consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        inits = set(consts)
        return {n.input[0]: float(consts[n.input[1]]) for n in model.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] not in inits and consts.get(n.input[1]) is not None
                and consts[n.input[1]].size == 1}
    a, b = scales(ours), scales(theirs)
    common = sorted(a.keys() & b.keys())
    rel = [abs(a[k] - b[k]) / max(abs(a[k]), 1e-30) for k in common]
    return {"tensors": len(common), "max_rel_diff": max(rel) if rel else None}


# ------------------------------------------------------------------------------------- one model

def compare_model(name: str, work: Path, python: Path, calib_images: int, eval_images: int,
                  with_map: bool, methods: list[str]) -> dict[str, Any]:
    src = export_model(name, work)
    spec = read_spec(src)
    proto = onnx.load(str(src))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    input_hw = (dims[2], dims[3])
    source = sets.open_calib_set("demo")
    images = sets.load_calibration(source, spec, calib_images, 0, input_hw, 1, False)
    inputs = images.inputs
    npz = work / f"{name}.calib.npz"
    np.savez(npz, **{proto.graph.input[0].name: np.concatenate(inputs, 0)})
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    ranges = int8.calibrate(src, inputs, "minmax", progress=False)
    times["trt-calib calibrate"] = time.perf_counter() - t0
    predictors = select.select_nodes(proto, [select.PREDICTORS])

    files: dict[str, Path] = {}
    for key, config in (("trt-calib default", int8.QuantizeConfig("minmax", predictors)),
                        ("trt-calib all-INT8", int8.QuantizeConfig("minmax", [])),
                        ("trt-calib ORT placement", int8.QuantizeConfig("minmax", predictors, placement="ort"))):
        path = work / f"{name}.{key.replace(' ', '_')}.onnx"
        t0 = time.perf_counter()
        model = int8.quantize(src, path, ranges, config)
        times[key] = time.perf_counter() - t0
        set_metadata(model, spec, {**read_info(src), "precision": "int8"})
        write_bytes_atomic(path, model.SerializeToString())
        files[key] = path
    for method in methods:  # the default placement with histogram ranges (same tensors)
        key = f"trt-calib default, {method}"
        path = work / f"{name}.trt_{method}.onnx"
        t0 = time.perf_counter()
        model = int8.quantize(src, path, int8.calibrate(src, inputs, method, progress=False),
                              int8.QuantizeConfig(method, predictors))
        times[key] = time.perf_counter() - t0
        set_metadata(model, spec, {**read_info(src), "precision": "int8"})
        write_bytes_atomic(path, model.SerializeToString())
        files[key] = path
    path = work / f"{name}.ort_minmax.onnx"
    t0 = time.perf_counter()
    ort_minmax(src, path, inputs)
    times["ORT MinMax"] = time.perf_counter() - t0
    stamp(path, src)
    files["ORT MinMax"] = path
    for key, exclude in (("ModelOpt max", []), ("ModelOpt max, predictors excluded", predictors)):
        path = work / f"{name}.{'modelopt' if not exclude else 'modelopt_excl'}.onnx"
        times[key] = run_modelopt(python, src, npz, path, exclude)
        stamp(path, src)
        files[key] = path

    models = {k: onnx.load(str(p)) for k, p in files.items()}
    sites = {k: placement.read_sites(m) for k, m in models.items()}
    diffs = placement.explained_differences(sites["trt-calib default"], sites["ModelOpt max"], proto)
    result: dict[str, Any] = {
        "model": DESCRIBE[name],
        "calibration": {"set": "demo (synthetic 'calib' split)", "seed": 0, "images": len(images.sources),
                        "digest": images.digest, "ranges": "max (trt-calib's minmax; ModelOpt 'max'; ORT MinMax) "
                        "unless a file's name says entropy or percentile",
                        "method_params": {m: int8.method_params(m) for m in methods}},
        "placement": {
            "sites": {k: {"activation": sum(s.kind == "activation" for s in v), "weight": sum(s.kind == "weight" for s in v)}
                      for k, v in sites.items()},
            "differences_vs_modelopt": diffs,
            "unexplained": [d for d in diffs if d["explanation"] is None],
            "explanations": {k: placement.EXPLANATIONS[k] for k in sorted({d["explanation"] for d in diffs} - {None})},
            "all_int8_vs_modelopt": placement.differences(sites["trt-calib all-INT8"], sites["ModelOpt max"]),
            "default_vs_modelopt_excluded": placement.differences(sites["trt-calib default"],
                                                                  sites["ModelOpt max, predictors excluded"]),
            "ort_placement_vs_modelopt": len(placement.differences(sites["trt-calib ORT placement"], sites["ModelOpt max"])),
        },
        "scales_vs_modelopt": scale_agreement(models["trt-calib all-INT8"], models["ModelOpt max"]),
        "lint": {k: lint.lint_file(p).to_dict() for k, p in files.items()},
        "quantize_s": times,
    }
    for entry in result["lint"].values():
        entry["problems"] = entry["problems"][:20]

    photos, _, _ = accuracy.held_out_inputs(spec, input_hw, 1)
    ref = accuracy.run_all(cpu_session(src, arithmetic=ACCURACY_ARITHMETIC), photos)
    sqnr = {}
    for key, path in files.items():
        cmp = accuracy.compare_runs(ref, accuracy.run_all(cpu_session(path, arithmetic=ACCURACY_ARITHMETIC), photos))
        sqnr[key] = {"worst_db": min(v["sqnr_db"] for v in cmp.values()), "per_output_db": {k: v["sqnr_db"] for k, v in cmp.items()}}
    result["held_out_sqnr"] = {"photos": len(photos), "arithmetic": ARITHMETIC, "files": sqnr}

    if with_map:
        from retinanet_trt.calib.detection_map import EvalSet, map_scores

        evaluation = EvalSet.for_source(source, images, eval_images)
        assert evaluation is not None
        scores = {"FP32": map_scores(src, evaluation, progress=False)}
        for key, path in files.items():
            scores[key] = map_scores(path, evaluation, progress=False)
        result["map"] = {"metric": "COCO AP@[.50:.95] (fraction)", "arithmetic": ARITHMETIC, "images": evaluation.num_images,
                         "set": evaluation.describe, "files": scores,
                         "delta_vs_fp32": {k: v["AP"] - scores["FP32"]["AP"] for k, v in scores.items() if k != "FP32"}}
    return result


def table(results: dict[str, Any]) -> str:
    lines = []
    for name, r in results.items():
        lines.append(f"## {name}: {r['model']}")
        lines.append(f"calibration: {r['calibration']['images']} images, {r['calibration']['set']}, max ranges")
        p = r["placement"]
        lines.append(f"placement differences vs ModelOpt max: {len(p['differences_vs_modelopt'])} "
                     f"(unexplained {len(p['unexplained'])}); all-INT8 vs ModelOpt: {len(p['all_int8_vs_modelopt'])}; "
                     f"default vs ModelOpt with predictors excluded: {len(p['default_vs_modelopt_excluded'])}; "
                     f"previous ORT placement vs ModelOpt: {p['ort_placement_vs_modelopt']}")
        lines.append(f"activation scales vs ModelOpt: {r['scales_vs_modelopt']}")
        header = f"{'file':36s} {'sites (act/w)':>14s} {'lint':>5s} {'worst SQNR dB':>14s}"
        if "map" in r:
            header += f" {'mAP':>7s} {'vs FP32':>8s}"
        lines.append(header)
        if "map" in r:
            lines.append(f"{'FP32':36s} {'':>14s} {'':>5s} {'':>14s} {r['map']['files']['FP32']['AP']:7.4f}")
        for key, s in p["sites"].items():
            row = (f"{key:36s} {str(s['activation']) + '/' + str(s['weight']):>14s} "
                   f"{'PASS' if r['lint'][key]['passed'] else 'FAIL':>5s} {r['held_out_sqnr']['files'][key]['worst_db']:14.2f}")
            if "map" in r:
                row += f" {r['map']['files'][key]['AP']:7.4f} {r['map']['delta_vs_fp32'][key]:+8.4f}"
            lines.append(row)
        if "map" in r:
            lines.append(f"(mAP: {r['map']['images']} images, {r['map']['set']}; {ARITHMETIC})")
        lines.append("")
    return "\n".join(lines)


def fixture_spec():  # type: ignore[no-untyped-def]
    """The `tiny` preset narrowed to stay under 2 MB as ModelOpt writes it (float weights, one copy
    of the shared head per level): ResNet-18 of width 8, FPN and head of 16 channels, resize 128/160."""
    from retinanet_trt.spec.presets import get_preset

    spec = get_preset("tiny")
    spec.preprocess.min_size, spec.preprocess.max_size = 128, 160
    spec.backbone.stem_channels, spec.backbone.width_per_group = 8, 8
    spec.fpn.out_channels = spec.head.channels = 16
    return spec


def make_fixture(python: Path, work: Path) -> Path:
    """tests/data/tiny_modelopt_int8.onnx: the tiny preset quantized by ModelOpt max (see module docstring)."""
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx
    from retinanet_trt.model import build_model

    spec = fixture_spec()
    src = work / "tiny.onnx"
    export_onnx(build_model(spec, seed=0), spec, src, ExportOptions(input_hw=(128, 160)))
    images = sets.load_calibration(sets.open_calib_set("demo"), spec, 8, 0, (128, 160), 1, False)
    npz = work / "tiny.calib.npz"
    np.savez(npz, **{onnx.load(str(src)).graph.input[0].name: np.concatenate(images.inputs, 0)})
    out = work / "tiny_modelopt_int8.onnx"
    run_modelopt(python, src, npz, out, [])
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(FIXTURE, out.read_bytes())
    return FIXTURE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"ModelOpt's own venv (default {DEFAULT_VENV})")
    p.add_argument("--models", nargs="+", default=["demo", "r50"], choices=["demo", "r50"])
    p.add_argument("--calib-images", type=int, default=64)
    p.add_argument("--eval-images", type=int, default=300)
    p.add_argument("--methods", nargs="*", default=["entropy", "percentile"], choices=["entropy", "percentile"],
                   help="also score trt-calib's default placement with these ranges (demo only; default both)")
    p.add_argument("--fixture", action="store_true", help="only (re)make the test fixture")
    args = p.parse_args(argv)
    python = ensure_modelopt(args.venv)
    with tempfile.TemporaryDirectory(prefix="modelopt_compare.") as tmp:
        work = Path(tmp)
        if args.fixture:
            path = make_fixture(python, work)
            print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
            return 0
        results = {}
        for name in args.models:
            t0 = time.perf_counter()
            results[name] = compare_model(name, work, python, args.calib_images, args.eval_images, with_map=name == "demo",
                                          methods=args.methods if name == "demo" else [])
            results[name]["seconds"] = time.perf_counter() - t0
            doc = {"benchmark": "INT8 placement and accuracy: trt-calib vs ONNX Runtime quantize_static vs ModelOpt, "
                                "same calibration tensors, same run",
                   "versions": package_versions(), "modelopt_venv_versions": modelopt_versions(python),
                   "result": results[name]}
            write_json_atomic(RESULTS / f"modelopt_compare_{name}.json", doc)
        print(table(results))
    # the table covers every model recorded so far, from this run or an earlier one
    recorded = {n: json.loads((RESULTS / f"modelopt_compare_{n}.json").read_text())["result"]
                for n in ("demo", "r50") if (RESULTS / f"modelopt_compare_{n}.json").is_file()}
    (RESULTS / "modelopt_compare.txt").write_text(table(recorded) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
