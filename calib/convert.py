"""FP32 ONNX -> FP16 or INT8 (Q/DQ) ONNX, with its accuracy report: the API behind trt-calib and trt-build.

    report = convert_precision(Path("m.onnx"), "int8", Path("m.int8.onnx"), calib="demo",
                               calib_images=64, seed=0, cache=None, method="max")
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from retinanet_trt.calib import budget, cache, fp16, int8, lint, report_cache, scoring, select, sets
from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import atomic_path, check_writable, sha256_file
from retinanet_trt.spec import ModelSpec
from retinanet_trt.spec.metadata import load_onnx, read_info, resolve_spec, set_metadata
from retinanet_trt.versions import package_versions

PRECISIONS = ("fp16", "int8")
# NVIDIA's name (ModelOpt, TAO, trtexec's calibrators) for min/max ranges; trt-build uses it too.
DEFAULT_METHOD = "max"
DEFAULT_CALIB_IMAGES = 64
DEFAULT_EVAL_IMAGES = 100


@dataclass
class ConvertOptions:
    """Everything convert() takes beyond source, precision and output (see trt-calib --help)."""

    calib: str | None = None
    calib_images: int = DEFAULT_CALIB_IMAGES
    seed: int = 0
    cache: Path | None = None  # a ranges file the user names (report cache beside it); None: in cache_dir
    cache_dir: Path | None = None  # content-addressed cache folder; None: cache.default_cache_dir()
    method: str = DEFAULT_METHOD
    exclude: list[str] = field(default_factory=list)
    default_exclusions: bool = True  # INT8: keep the cls/box predictor convs in FP32
    sensitivity: bool = False
    evaluate_map: bool = True  # when the calibration set has annotations
    eval_images: int = DEFAULT_EVAL_IMAGES
    image_root: Path | None = None  # folder the COCO json's file_name entries are relative to
    spec: ModelSpec | None = None  # for a source without this project's metadata (--spec)
    budget: budget.Budget | None = None  # INT8: keep the fewest layers in float that meet it
    progress: bool = True


def convert_precision(src_onnx: Path, precision: str, out_onnx: Path, *, calib: str | None, calib_images: int,
                      seed: int, cache: Path | None, method: str, progress: bool = True,
                      spec: ModelSpec | None = None) -> dict[str, Any]:
    """Write an FP16 or INT8 copy of src_onnx to out_onnx; return the accuracy report (see convert).
    spec: for a source without this project's metadata (trt-build --spec / --onnx)."""
    opts = ConvertOptions(calib=calib, calib_images=calib_images, seed=seed,
                          cache=Path(cache) if cache is not None else None, method=method, progress=progress, spec=spec)
    return convert(Path(src_onnx), precision, Path(out_onnx), opts)


@dataclass
class _Model:
    path: Path
    proto: onnx.ModelProto
    spec: ModelSpec
    info: dict[str, Any]
    input_hw: tuple[int, int] | None  # static H, W or None
    batch: int  # static batch, or 1 when dynamic
    sha256: str  # of the file: the report cache's key and the converted file's record of its source


def _open_model(path: Path, spec: ModelSpec | None = None) -> _Model:
    header = load_onnx(path)  # UsageError for a missing or unreadable file
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in header.graph.node):
        raise UsageError(f"{path} already holds Q/DQ nodes; convert the FP32 export instead (to score it "
                         "against that file: trt-calib THIS.onnx --onnx FP32.onnx)")
    info = read_info(header)
    if info.get("precision", "fp32") != "fp32":
        raise UsageError(f"{path} is already {info['precision']}; convert the FP32 export instead")
    spec = resolve_spec(header, spec=spec, where=str(path))  # UsageError for a file without a spec
    proto = onnx.load(str(path))  # with its external data, if any
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    static = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    input_hw = (static[2], static[3]) if static[2] and static[3] else None
    return _Model(path, proto, spec, info, input_hw, static[0] or 1, sha256_file(path))


def _calibration(model: _Model, opts: ConvertOptions, method: str, timings: dict[str, float]
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
    # The output's name is no input: by default the ranges live in the cache folder under their key.
    path = opts.cache or cache.ranges_path(opts.cache_dir or cache.default_cache_dir(), key)
    report: dict[str, Any] = {"path": str(path), "key": key.key, "reused": False}
    try:
        ranges = cache.load_cache(path, key)
    except UsageError as exc:
        if opts.cache is not None:
            raise  # a cache the user named is never replaced
        report["replaced"] = str(exc)  # a damaged entry in the cache folder is computed again
        ranges = None
    if ranges is not None:
        report["reused"] = True
        timings["calibrate_s"] = 0.0
        return source, images, ranges, report
    t0 = time.perf_counter()
    inputs = images.inputs  # pre-processed only now: a cached rerun never needs them
    timings["preprocess_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ranges = int8.calibrate(model.path, inputs, method, opts.progress)
    timings["calibrate_s"] = time.perf_counter() - t0
    if opts.cache is not None:
        cache.save_cache(path, key, ranges, {"name": method, **params}, images.sources)
    else:  # a cache folder that cannot be written loses the reuse, not the run
        note = cache.store_json(path, cache.cache_payload(key, ranges, {"name": method, **params}, images.sources))
        if note:
            report["note"] = note
    return source, images, ranges, report


def _write(model: onnx.ModelProto, spec: ModelSpec, info: dict[str, Any], out: Path) -> lint.LintResult:
    """Store spec and info, write to `out` (convert's staging file), then lint the file as written."""
    set_metadata(model, spec, info)
    out.write_bytes(model.SerializeToString())
    return lint.lint_file(out)


def _convert_file(model: _Model, precision: str, out: Path, opts: ConvertOptions, method: str,
                  ranges: dict[str, Any] | None, images: sets.CalibImages | None, source: sets.CalibSource | None,
                  cache_key: str | None, cached: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the FP16 / INT8 file and lint it; return the report keys that making it gives
    (calibration summary, exclusions, lint, fp16_overflow_nodes, budget). cached: what a cached
    report for the same inputs recorded of the conversion, so that a rerun to another output
    neither draws the calibration images again nor redoes the budget's search."""
    # the FP32 file it was made from, so scoring it later against another one (--onnx) is refused
    info = {**model.info, "precision": precision, "source_sha256": model.sha256}
    done: dict[str, Any] = {}
    searched = (cached or {}).get("budget")
    if cached and "calibration" in cached:
        done["calibration"] = cached["calibration"]
    elif source is not None and images is not None:  # stored with the report: a cached rerun reads no images
        done["calibration"] = {"set": source.name, "kind": source.kind, "method": method, "seed": opts.seed,
                               "requested": opts.calib_images, **images.summary()}
    if precision == "int8":
        excluded = select.select_nodes(model.proto, ([select.PREDICTORS] if opts.default_exclusions else []) + opts.exclude)
        if opts.budget is not None:
            if searched is None:
                searched = budget.search(model.path, model.proto, model.spec, ranges or {}, method, excluded,
                                         opts.budget, source, images, opts.eval_images, model.input_hw, model.batch,
                                         opts.progress)
            done["budget"] = searched
        kept, keep_as = [], budget.KEEP_AS[0]
        if opts.budget is not None and searched is not None:
            kept = [k["layer"] for k in searched["kept"] if k["layer"] not in excluded]
            keep_as = opts.budget.keep_as
        with tempfile.TemporaryDirectory(prefix="retinanet_trt.int8.") as tmp:
            converted, classes = budget.quantize_keeping(model.path, Path(tmp) / "int8.onnx", ranges or {}, method,
                                                         excluded, kept, keep_as)
        info["kept_fp16"] = [layer for layer, c in classes.items() if c == "fp16"]
        excluded = excluded + [layer for layer in kept if classes[layer] == "fp32"]
        info["calibration"] = {"method": method, "images": done["calibration"]["images_used"] if "calibration" in done else 0,
                               "set": source.name if source else None, "cache_key": cache_key}
    else:
        excluded = select.select_nodes(model.proto, opts.exclude) if opts.exclude else []
        overflow = fp16.overflow_nodes(model.proto, fp16.tensor_peaks(ranges)) if ranges else []
        excluded += [n for n in overflow if n not in excluded]
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        # a head conv kept FP32 at one level shares its weights with the levels converted to FP16
        int8.untie_excluded_weights(proto, set(excluded))
        converted = fp16.convert_fp16(proto, excluded)
        done["fp16_overflow_nodes"] = overflow
    info["kept_fp32"] = excluded
    lint_result = _write(converted, model.spec, info, out)
    done["exclusions"] = excluded
    done["lint"] = lint_result.to_dict()
    if not lint_result.passed:
        raise UsageError(f"{out} breaks TensorRT's Q/DQ rules: {'; '.join(lint_result.problems[:3])}")
    return done


def _report_parts(model: _Model, precision: str, opts: ConvertOptions, method: str, source: sets.CalibSource | None,
                  images: sets.CalibImages | None) -> dict[str, str]:
    """The report cache's key parts: every input the converted file and its scores depend on."""
    from retinanet_trt.calib.detection_map import eval_set_digest

    calib = None
    if source is not None and images is not None:
        calib = {"set": source.name, "kind": source.kind, "images": images.digest, "calib_images": opts.calib_images,
                 "seed": opts.seed, "image_root": str(source.root) if source.root else None}
    evaluation = {"evaluate_map": opts.evaluate_map, "eval_images": opts.eval_images,
                  "set": eval_set_digest(source, images, opts.eval_images)
                  if opts.evaluate_map and source is not None and images is not None else None}
    return report_cache.report_key_parts(
        source=model.sha256, precision=precision, calibration=calib,
        method={"name": method, **int8.method_params(method)},
        exclusions={"exclude": opts.exclude, "default_exclusions": opts.default_exclusions},
        evaluation=evaluation, sensitivity=opts.sensitivity and precision == "int8", spec=model.spec.to_dict(),
        budget=opts.budget.to_dict() if opts.budget is not None and precision == "int8" else None,
        arithmetic=scoring.ARITHMETIC, versions=report_cache.score_versions(), code=report_cache.code_digest(),
    )


def convert(src: Path, precision: str, out: Path, opts: ConvertOptions) -> dict[str, Any]:
    """Convert src to `precision` at out, lint it, measure it against src; return the report dict.

    Report keys: precision, source, output, calibration, cache, exclusions, lint, arithmetic,
    sqnr_db (per output), outputs (all stats per output), levels (per-level rows), held_out, map
    and map_detail (when the set has annotations), sensitivity (INT8 with opts.sensitivity),
    budget (INT8 with opts.budget), times_s, versions. A rerun with the same inputs reuses the
    cached report (cache.report_reused) instead of scoring again, whatever the output's name; an
    unchanged output is not even rewritten (cache.output_reused).
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
    if opts.budget is not None:
        opts.budget.check(precision, opts.calib, opts.evaluate_map)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    model = _open_model(src, opts.spec)
    if opts.exclude:  # a pattern that matches nothing is a typo: say so before calibrating for minutes
        select.select_nodes(model.proto, opts.exclude)
    report: dict[str, Any] = {"precision": precision, "source": str(src), "output": str(out)}
    source = images = ranges = None
    cache_info: dict[str, Any] = {"path": None, "key": None, "reused": False}
    if opts.budget is not None and opts.calib:  # before calibrating for minutes
        opts.budget.check_set(sets.open_calib_set(opts.calib, opts.image_root))
    if opts.calib:
        source, images, ranges, cache_info = _calibration(model, opts, method, timings)
    report["cache"] = cache_info

    # A report cached for the same inputs and these exact output bytes is reused as it is: from the
    # cache folder under its key (any output name), or beside a ranges file named with --cache.
    cache_dir = opts.cache_dir or cache.default_cache_dir()
    parts = _report_parts(model, precision, opts, method, source, images)
    rpath = report_cache.report_cache_path(opts.cache) if opts.cache else report_cache.entry_path(cache_dir, parts)
    entry, note = report_cache.load_entry(rpath, parts)
    if entry is None and note is None and opts.cache is None:
        note = report_cache.changed_note(cache_dir, out, parts)
    cache_info.update(report_path=str(rpath), report_reused=False, output_reused=False)
    if note:
        cache_info["report_note"] = note
    reuse_output = entry is not None and out.is_file() and sha256_file(out) == entry["output_sha256"]
    with contextlib.ExitStack() as stack:
        # A new file is made and scored under a temporary name and renamed onto `out` only when the
        # report is complete: an error, Ctrl-C or SIGTERM leaves no output (and an older one intact).
        target = out if reuse_output else stack.enter_context(atomic_path(out, suffix=".onnx"))
        if reuse_output:
            assert entry is not None
            conversion, cache_info["output_reused"] = entry["conversion"], True
            timings["convert_s"] = 0.0
        else:
            t0 = time.perf_counter()
            conversion = _convert_file(model, precision, target, opts, method, ranges, images, source,
                                       cache_info["key"], entry["conversion"] if entry is not None else None)
            timings["convert_s"] = time.perf_counter() - t0
        report.update(conversion)
        out_sha = sha256_file(target)
        if entry is not None and out_sha == entry["output_sha256"]:
            scores = entry["scores"]
            cache_info.update(report_reused=True, scored_at=entry.get("scored_at"), scored_times_s=entry.get("times_s"))
        else:
            if entry is not None:
                cache_info["report_note"] = f"{out} differs from the file the cached report scored; re-scored"
            score_times: dict[str, float] = {}
            searched = conversion.get("budget")
            scores = scoring.score(
                src, target, precision, proto=model.proto, spec=model.spec, input_hw=model.input_hw, batch=model.batch,
                source=source, images=images, evaluate_map=opts.evaluate_map, eval_images=opts.eval_images,
                sensitivity=opts.sensitivity, ranges=ranges, method=method, excluded=conversion["exclusions"],
                progress=opts.progress, timings=score_times, known_map=searched.get("map_scores") if searched else None)
            if searched:
                score_times["budget_search_s"] = searched.get("search_s", 0.0)
            timings.update(score_times)
            written = report_cache.save_entry(rpath, parts, out_sha, conversion, scores, score_times)
            if written:
                cache_info["report_note"] = written
    if opts.cache is None:
        report_cache.remember(cache_dir, out, parts)
    report.update(scores)
    timings["total_s"] = time.perf_counter() - t_start
    report["times_s"] = timings
    report["versions"] = package_versions()
    return report


def score_file(model_path: Path, reference: Path, opts: ConvertOptions) -> dict[str, Any]:
    """Score an FP16 / INT8 file that any tool made (ModelOpt, ORT quantize_static, trt-calib)
    against the FP32 file it was made from: the report convert() gives, for a file it did not write
    (held-out SQNR per output and level, COCO mAP on the set's held-out images with opts.calib when
    it has annotations, the lint), with nothing written. The precision is read from the graph, and
    every figure is computed in simulated Q/DQ. opts.spec: the spec when neither file carries one."""
    from retinanet_trt.spec.metadata import io_mismatch
    from retinanet_trt.tensorrt.build import detect_precision

    t_start = time.perf_counter()
    ref = _open_model(reference, opts.spec)  # the FP32 file: UsageError when it is not one
    scored = load_onnx(model_path)
    differ = io_mismatch(scored, ref.proto)
    if differ:
        raise UsageError(f"{model_path} and --onnx {reference} are not the same network ({differ}); "
                         "give the FP32 file this one was made from")
    made_from = read_info(scored).get("source_sha256")
    if made_from and made_from != ref.sha256:
        raise UsageError(f"{model_path} was made from another FP32 file than --onnx {reference} (its metadata "
                         "records the source's sha256); give the file it was made from")
    spec = resolve_spec(scored, spec=ref.spec)  # checked against the scored graph's outputs
    precision = detect_precision(scored)
    if precision == "fp32":
        raise UsageError(f"{model_path} has no Q/DQ nodes and no FP16 tensors; to convert it, give --int8 or --fp16 "
                         "without --onnx")
    report: dict[str, Any] = {"precision": precision, "source": str(reference), "output": str(model_path),
                              "scored_only": True, "cache": {"path": None, "key": None, "reused": False}}
    source = images = None
    timings: dict[str, float] = {}
    if opts.calib:
        source = sets.open_calib_set(opts.calib, opts.image_root)
        images = sets.load_calibration(source, spec, opts.calib_images, opts.seed, ref.input_hw, ref.batch, opts.progress)
        report["calibration"] = {"set": source.name, "kind": source.kind, "method": None, "seed": opts.seed,
                                 "requested": opts.calib_images, **images.summary(),
                                 "note": "images held out of the mAP set only; the file's ranges came from its own tool"}
    result = lint.lint_file(model_path)
    report["lint"] = result.to_dict()
    report["exclusions"] = float_weight_layers(scored) if precision == "int8" else []
    report.update(scoring.score(
        reference, model_path, precision, proto=ref.proto, spec=spec, input_hw=ref.input_hw, batch=ref.batch,
        source=source, images=images, evaluate_map=opts.evaluate_map, eval_images=opts.eval_images, sensitivity=False,
        ranges=None, method="minmax", excluded=[], progress=opts.progress, timings=timings))
    worst = min(report["sqnr_db"].values())
    if worst < UNRELATED_SQNR_DB:  # noise above the signal: no quantizer does that to its own source
        report["warning"] = (f"--onnx {reference}: {model_path}'s outputs differ from it by more than their own size "
                             f"(worst SQNR {worst:.1f} dB); is it the FP32 file this one was made from?")
    timings["total_s"] = time.perf_counter() - t_start
    report["times_s"] = timings
    report["versions"] = package_versions()
    return report


UNRELATED_SQNR_DB = 0.0  # below this, a scored file is probably not a conversion of the --onnx file


def float_weight_layers(model: onnx.ModelProto) -> list[str]:
    """Conv / Gemm / MatMul nodes of a Q/DQ graph whose weight is not dequantized: they run in float."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in budget.LAYER_OPS and len(n.input) > 1
            and n.input[1] not in dq_out]


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
