"""FP32 ONNX -> FP16 or INT8 (Q/DQ) ONNX, with its accuracy report: the API behind trt-calib and trt-build.

    report = convert_precision(Path("m.onnx"), "int8", Path("m.int8.onnx"), calib="demo",
                               calib_images=64, seed=0, cache=None, method="minmax")
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from retinanet_trt.calib import accuracy, cache, fp16, int8, lint, select, sets
from retinanet_trt.calib.sensitivity import sensitivity_sweep
from retinanet_trt.errors import UsageError
from retinanet_trt.export.metadata import read_info, read_spec, set_metadata
from retinanet_trt.fileio import check_writable, write_bytes_atomic
from retinanet_trt.runtime.backends.ort_backend import cpu_session
from retinanet_trt.spec import ModelSpec
from retinanet_trt.versions import package_versions

PRECISIONS = ("fp16", "int8")
DEFAULT_METHOD = "minmax"
DEFAULT_CALIB_IMAGES = 64
DEFAULT_EVAL_IMAGES = 100


@dataclass
class ConvertOptions:
    """Everything convert() takes beyond source, precision and output (see trt-calib --help)."""

    calib: str | None = None
    calib_images: int = DEFAULT_CALIB_IMAGES
    seed: int = 0
    cache: Path | None = None
    method: str = DEFAULT_METHOD
    exclude: list[str] = field(default_factory=list)
    default_exclusions: bool = True  # INT8: keep the cls/box predictor convs in FP32
    sensitivity: bool = False
    evaluate_map: bool = True  # when the calibration set has annotations
    eval_images: int = DEFAULT_EVAL_IMAGES
    image_root: Path | None = None  # folder the COCO json's file_name entries are relative to
    progress: bool = True


def convert_precision(src_onnx: Path, precision: str, out_onnx: Path, *, calib: str | None, calib_images: int,
                      seed: int, cache: Path | None, method: str) -> dict[str, Any]:
    """Write an FP16 or INT8 copy of src_onnx to out_onnx; return the accuracy report (see convert)."""
    opts = ConvertOptions(calib=calib, calib_images=calib_images, seed=seed,
                          cache=Path(cache) if cache is not None else None, method=method)
    return convert(Path(src_onnx), precision, Path(out_onnx), opts)


@dataclass
class _Model:
    path: Path
    proto: onnx.ModelProto
    spec: ModelSpec
    info: dict[str, Any]
    input_hw: tuple[int, int] | None  # static H, W or None
    batch: int  # static batch, or 1 when dynamic


def _open_model(path: Path) -> _Model:
    spec = read_spec(path)  # UsageError for a missing, unreadable or foreign file
    proto = onnx.load(str(path))
    info = read_info(proto)
    if info.get("precision", "fp32") != "fp32":
        raise UsageError(f"{path} is already {info['precision']}; convert the FP32 export instead")
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node):
        raise UsageError(f"{path} already holds Q/DQ nodes; convert the FP32 export instead")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    static = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    input_hw = (static[2], static[3]) if static[2] and static[3] else None
    return _Model(path, proto, spec, info, input_hw, static[0] or 1)


def _calibration(model: _Model, opts: ConvertOptions, out: Path, method: str, timings: dict[str, float]
                 ) -> tuple[sets.CalibSource, sets.CalibImages, dict[str, Any], dict[str, Any]]:
    """(source, images, ranges, cache report): ranges come from the cache when its key matches."""
    source = sets.open_calib_set(opts.calib or "", opts.image_root)
    t0 = time.perf_counter()
    images = sets.load_calibration(source, model.spec, opts.calib_images, opts.seed, model.input_hw, model.batch, opts.progress)
    timings["load_images_s"] = time.perf_counter() - t0
    params = int8.method_params(method)
    key = cache.CacheKey(
        model=cache.model_digest(model.proto),
        images=images.digest,
        preprocess=cache.preprocess_digest(model.spec, model.input_hw, model.batch),
        method=cache.method_digest(method, params),
    )
    path = opts.cache or cache.default_cache_path(out)
    report: dict[str, Any] = {"path": str(path), "key": key.key, "reused": False}
    try:
        ranges = cache.load_cache(path, key)
    except UsageError as exc:
        if opts.cache is not None:
            raise  # a cache the user named is never replaced
        report["replaced"] = str(exc)  # the default one beside the output follows its output
        ranges = None
    if ranges is not None:
        report["reused"] = True
        timings["calibrate_s"] = 0.0
        return source, images, ranges, report
    t0 = time.perf_counter()
    ranges = int8.calibrate(model.path, images.inputs, method, opts.progress)
    timings["calibrate_s"] = time.perf_counter() - t0
    cache.save_cache(path, key, ranges, {"name": method, **params}, images.sources)
    return source, images, ranges, report


def _write(model: onnx.ModelProto, spec: ModelSpec, info: dict[str, Any], out: Path) -> lint.LintResult:
    """Store spec and info, write atomically, then lint the file as written."""
    set_metadata(model, spec, info)
    write_bytes_atomic(out, model.SerializeToString())
    return lint.lint_file(out)


def convert(src: Path, precision: str, out: Path, opts: ConvertOptions) -> dict[str, Any]:
    """Convert src to `precision` at out, lint it, measure it against src; return the report dict.

    Report keys: precision, source, output, calibration, cache, exclusions, lint, sqnr_db
    (per output), outputs (all stats per output), levels (per-level rows), held_out, map (when
    the set has annotations), sensitivity (INT8 with opts.sensitivity), times_s, versions.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and not opts.calib:
        raise UsageError("INT8 needs a calibration set: --calib FOLDER, --calib COCO.json or --calib demo")
    method = int8.canonical_method(opts.method) if precision == "int8" else "minmax"  # FP16 needs peaks only
    int8.method_params(method)
    check_writable(out)
    if out.resolve() == src.resolve():
        raise UsageError(f"-o {out} would overwrite the FP32 source; choose another output name")
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    model = _open_model(src)
    report: dict[str, Any] = {"precision": precision, "source": str(src), "output": str(out)}
    source = images = ranges = None
    if opts.calib:
        source, images, ranges, report["cache"] = _calibration(model, opts, out, method, timings)
        report["calibration"] = {"set": source.name, "kind": source.kind, "method": method, "seed": opts.seed,
                                 "requested": opts.calib_images, **images.summary()}

    t0 = time.perf_counter()
    info = {**model.info, "precision": precision}
    if precision == "int8":
        excluded = select.select_nodes(model.proto, ([select.PREDICTORS] if opts.default_exclusions else []) + opts.exclude)
        config = int8.QuantizeConfig(method=method, exclude=excluded)
        with tempfile.TemporaryDirectory(prefix="retinanet_trt.int8.") as tmp:
            converted = int8.quantize(src, Path(tmp) / "int8.onnx", ranges or {}, config)
        info["calibration"] = {"method": method, "images": len(images.sources) if images else 0,
                               "set": source.name if source else None, "cache_key": report["cache"]["key"]}
    else:
        excluded = select.select_nodes(model.proto, opts.exclude) if opts.exclude else []
        overflow = fp16.overflow_nodes(model.proto, fp16.tensor_peaks(ranges)) if ranges else []
        excluded += [n for n in overflow if n not in excluded]
        converted = fp16.convert_fp16(model.proto, excluded)
        report["fp16_overflow_nodes"] = overflow
    info["kept_fp32"] = excluded
    lint_result = _write(converted, model.spec, info, out)
    timings["convert_s"] = time.perf_counter() - t0
    report["exclusions"] = excluded
    report["lint"] = lint_result.to_dict()
    if not lint_result.passed:
        raise UsageError(f"{out} breaks TensorRT's Q/DQ rules: {'; '.join(lint_result.problems[:3])}")

    t0 = time.perf_counter()
    photos, names, stretched = accuracy.held_out_inputs(model.spec, model.input_hw, model.batch)
    ref_sess, cand_sess = cpu_session(src), cpu_session(out)
    ref_runs = accuracy.run_all(ref_sess, photos)
    cmp = accuracy.compare_runs(ref_runs, accuracy.run_all(cand_sess, photos))
    report["sqnr_db"] = {k: v["sqnr_db"] for k, v in cmp.items()}
    report["outputs"] = cmp
    report["levels"] = accuracy.level_rows(cmp)
    report["held_out"] = {"photos": names, "stretched_to_input": stretched}
    timings["held_out_s"] = time.perf_counter() - t0

    evaluation = None
    if source is not None and images is not None and opts.evaluate_map:
        t0 = time.perf_counter()
        evaluation = _map_report(src, out, precision, source, images, opts, report)
        timings["map_s"] = time.perf_counter() - t0
    if precision == "int8" and opts.sensitivity:
        t0 = time.perf_counter()
        fp32_ap = report["map"]["fp32"] if "map" in report else None
        report["sensitivity"] = sensitivity_sweep(
            model.proto, src, ranges or {}, method, excluded, photos, ref_runs, evaluation, fp32_ap, opts.progress)
        timings["sensitivity_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    report["times_s"] = timings
    report["versions"] = package_versions()
    return report


def _map_report(src: Path, out: Path, precision: str, source: sets.CalibSource, images: sets.CalibImages,
                opts: ConvertOptions, report: dict[str, Any]) -> Any:
    """Fill report["map"] (COCO AP x 100) for FP32 and the converted file; return the evaluation set."""
    from retinanet_trt.calib.detection_map import EvalSet, map_points

    evaluation = EvalSet.for_source(source, images, opts.eval_images)
    if evaluation is None:
        return None
    fp32 = map_points(src, evaluation, opts.progress)
    converted = map_points(out, evaluation, opts.progress)
    report["map"] = {"fp32": fp32["AP"], precision: converted["AP"]}
    report["map_detail"] = {"metric": "COCO AP@[.50:.95] x 100", "images": evaluation.num_images,
                            "set": evaluation.describe, "fp32": fp32, precision: converted,
                            "delta": converted["AP"] - fp32["AP"]}
    return evaluation


def report_json(report: dict[str, Any]) -> str:
    """The report as JSON text (infinite SQNR, from identical outputs, becomes null)."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not np.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(report), indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
