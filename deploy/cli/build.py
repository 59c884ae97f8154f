"""trt-build: an ONNX file -> (FP16 / INT8 ONNX ->) a TensorRT engine with its sidecar and layer JSON."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from retinanet_trt.cli.common import (
    EXIT_USAGE,
    add_engine_spec_args,
    add_progress_arg,
    check_count,
    make_parser,
    read_spec_file,
    run_main,
    seed,
    show_progress,
)
from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import check_outputs
from retinanet_trt.spec.metadata import load_onnx, resolve_spec
from retinanet_trt.tensorrt.build import build_engine, check_options, detect_precision, plan_profiles
from retinanet_trt.tensorrt.engine import ShapeRange, TrtError, TrtUnavailable, available

EXAMPLES = """\
  trt-build m.onnx                                    # FP32: m.engine, m.engine.json, m.layers.json
  trt-build m.onnx --fp16 -o m.fp16.engine            # FP16 ONNX (m.fp16.onnx), then a strongly typed build
  trt-build m.onnx --int8 --calib demo --calib-images 256 --calib-method entropy
  trt-build m.onnx --int8 --calib images/ --calib-cache m.calib --onnx-only   # only m.int8.onnx, no GPU needed
  trt-build dyn.onnx --fp16 --shapes 1x3x320x320/1x3x480x640/4x3x800x1088 --timing-cache trt.cache
  trt-build dyn.onnx --shapes 1x3x480x640/1x3x480x640/1x3x480x640 --shapes 1x3x800x1088/1x3x800x1088/1x3x800x1088
  trt-build m.onnx --fp16 --dla-core 0 --gpu-fallback --workspace 1           # Jetson Orin DLA
  trt-build modelopt.int8.onnx --onnx m.onnx          # another quantizer's file: the spec from its FP32 source
"""

_DIMS = re.compile(r"^[1-9]\d*(x[1-9]\d*)*$")
CALIB_IMAGES = 64
# The range estimators by NVIDIA's names, as trt-calib --method takes them (calib.int8 maps "max" to
# ONNX Runtime's MinMax); listed here so --help does not import the calibration stack.
CALIB_METHODS = ("max", "entropy", "percentile")


def parse_shape_range(text: str) -> ShapeRange:
    """"1x3x320x320/1x3x480x640/4x3x800x1088" -> ((1,3,320,320), (1,3,480,640), (4,3,800,1088))."""
    parts = text.split("/")
    if len(parts) != 3 or not all(_DIMS.match(p) for p in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not MIN/OPT/MAX with positive dims joined by x, e.g. 1x3x320x320/1x3x480x640/4x3x800x1088"
        )
    lo, opt, hi = (tuple(int(d) for d in p.split("x")) for p in parts)
    return lo, opt, hi


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        "trt-build",
        "Build a TensorRT engine from an ONNX file made by trt-export. --fp16 / --int8 first write an FP16 or "
        "INT8 (Q/DQ) ONNX file (precision lives in the ONNX; TensorRT 11 has no precision flags), then build "
        "it strongly typed. Writes the engine, a JSON sidecar (versions, GPU, precision, shapes, hashes, spec) "
        "and the engine inspector's layer JSON.",
        EXAMPLES,
    )
    p.add_argument("model", type=Path, help="FP32 ONNX file from trt-export (or an FP16/INT8 one it made)")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="convert to FP16 (FP32 kept where values can overflow)")
    prec.add_argument("--int8", action="store_true", help="quantize to INT8 Q/DQ with scales from --calib")
    p.add_argument("--calib", metavar="SET", help="calibration set: an image folder, a COCO json or 'demo' "
                   "(needed by --int8; optional for --fp16, where it finds overflow-prone nodes to keep in FP32)")
    p.add_argument("--calib-cache", type=Path, metavar="F", help="calibration cache to reuse or write")
    p.add_argument("--calib-images", type=int, metavar="N", help=f"calibration images to use (default {CALIB_IMAGES})")
    p.add_argument("--calib-method", choices=CALIB_METHODS, help="INT8 activation ranges (default max, as trt-calib)")
    p.add_argument("--seed", type=seed, default=0, help="seed for sampling the calibration images")
    p.add_argument("-o", "--output", type=Path, help="engine path (default: MODEL's name with .engine / .fp16.engine)")
    p.add_argument("--workspace", type=float, metavar="GB", help="builder workspace memory limit in GiB")
    p.add_argument("--shapes", type=parse_shape_range, action="append", metavar="MIN/OPT/MAX",
                   help="input shape range of a dynamic model, one optimization profile each (repeatable)")
    p.add_argument("--timing-cache", type=Path, metavar="F", help="timing cache to reuse and update (faster rebuilds)")
    p.add_argument("--builder-opt-level", type=int, metavar="N", help="0..5: lower builds faster, higher may run faster")
    p.add_argument("--dla-core", type=int, metavar="N", help="run on DLA core N (Jetson; needs --fp16 or --int8)")
    p.add_argument("--gpu-fallback", action="store_true", help="with --dla-core: layers DLA cannot run go to the GPU")
    p.add_argument("--version-compatible", action="store_true", help="engine that later TensorRT runtimes can load")
    p.add_argument("--plugin-lib", type=Path, action="append", default=[], metavar="PATH",
                   help="plugin shared library to load before parsing (repeatable)")
    p.add_argument("--onnx-only", action="store_true", help="write the FP16/INT8 ONNX and stop (no TensorRT needed)")
    add_engine_spec_args(p)
    p.add_argument("--verbose", action="store_true", help="print TensorRT's warnings")
    add_progress_arg(p)
    return p


def _check_calib_flags(args: argparse.Namespace) -> None:
    given = [flag for flag, value in (("--calib", args.calib), ("--calib-cache", args.calib_cache),
                                      ("--calib-images", args.calib_images), ("--calib-method", args.calib_method))
             if value is not None]
    if args.int8 and args.calib is None:
        raise UsageError("--int8 needs a calibration set: --calib DIR, --calib COCO.json or --calib demo")
    if given and not (args.int8 or args.fp16):
        raise UsageError(f"{given[0]} only applies to --fp16 or --int8")
    check_count("--calib-images", args.calib_images)


def _output_paths(args: argparse.Namespace, precision: str) -> tuple[Path, Path]:
    """(engine path, precision ONNX path); the ONNX sits beside the engine with the .onnx suffix."""
    model: Path = args.model
    if args.output is None:
        stem = model.name[: -len(".onnx")] if model.name.endswith(".onnx") else model.name
        name = f"{stem}.engine" if precision == "fp32" else f"{stem}.{precision}.engine"
        engine = model.with_name(name)
    else:
        engine = args.output
    if engine.suffix == ".onnx" and not args.onnx_only:
        raise UsageError(f"-o {engine} names the engine; use a .engine name (or add --onnx-only)")
    precision_onnx = engine if engine.suffix == ".onnx" else engine.with_suffix(".onnx")
    if precision != "fp32" and precision_onnx.resolve() == model.resolve():
        raise UsageError(f"the {precision} ONNX would overwrite {model}; choose another -o")
    return engine, precision_onnx


def convert(src: Path, precision: str, out: Path, args: argparse.Namespace, spec: Any = None) -> dict[str, Any]:
    """Make the FP16 / INT8 ONNX with retinanet_trt.calib (imported here: only --fp16/--int8 need it)."""
    from retinanet_trt.calib.convert import convert_precision

    return convert_precision(
        src,
        precision,
        out,
        calib=args.calib,
        calib_images=args.calib_images or CALIB_IMAGES,
        seed=args.seed,
        cache=args.calib_cache,
        method=args.calib_method or CALIB_METHODS[0],
        progress=show_progress(args),
        spec=spec,
    )


def accuracy_line(report: dict[str, Any]) -> str:
    """One line for the FP16 / INT8 file: worst held-out SQNR, mAP when scored, the arithmetic,
    and whether the scores came from the report cache."""
    worst = min(report["sqnr_db"], key=lambda k: report["sqnr_db"][k])
    text = f"wrote {report['output']} ({report['precision']}): worst held-out SQNR {report['sqnr_db'][worst]:.1f} dB ({worst})"
    if "map" in report:
        text += f", mAP x100 {100 * report['map'][report['precision']]:.2f} vs fp32 {100 * report['map']['fp32']:.2f}"
    text += f"; arithmetic: {report['arithmetic']}"
    if report.get("cache", {}).get("report_reused"):
        text += f"; scores reused from {report['cache']['report_path']}"
    return text


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    precision = "fp16" if args.fp16 else "int8" if args.int8 else "fp32"
    _check_calib_flags(args)
    if args.onnx_only and precision == "fp32":
        raise UsageError("--onnx-only writes the FP16 or INT8 ONNX; add --fp16 or --int8")
    # Check everything about the source and the options before any long conversion or build.
    source = load_onnx(args.model)
    # --spec / --onnx: for a file without this project's metadata (e.g. another quantizer's output)
    spec = resolve_spec(source, spec=read_spec_file(args.spec) if args.spec else None, onnx_file=args.onnx,
                        where=str(args.model))
    found = detect_precision(source)
    if found != "fp32" and precision != "fp32" and found != precision:
        raise UsageError(f"{args.model} is already {found}; pass the FP32 ONNX from trt-export")
    target = found if precision == "fp32" else precision  # what the engine will compute in
    check_options(
        precision=target,
        workspace_gb=args.workspace,
        builder_opt_level=args.builder_opt_level,
        dla_core=args.dla_core,
        gpu_fallback=args.gpu_fallback,
        plugin_libs=args.plugin_lib,
        calib_cache=None,  # --calib-cache may be written by the conversion
    )
    if args.shapes or not args.onnx_only:  # the precision ONNX alone needs no shape ranges
        plan_profiles(source, args.shapes, spec, dla=args.dla_core is not None)
    engine_path, precision_onnx = _output_paths(args, precision)
    needs_conversion = precision != "fp32" and found != precision
    if args.onnx_only and not needs_conversion:
        raise UsageError(f"{args.model} is already {found}; --onnx-only has nothing to write")
    check_outputs(
        {f"the {precision} ONNX": precision_onnx if needs_conversion else None,
         "-o": None if args.onnx_only else engine_path,
         "the engine sidecar": None if args.onnx_only else Path(f"{engine_path}.json"),
         "--timing-cache": args.timing_cache, "--calib-cache": args.calib_cache},
        {"MODEL": args.model, "--calib": args.calib if args.calib and Path(args.calib).is_file() else None,
         "--onnx": args.onnx, "--spec": args.spec,
         **{f"--plugin-lib {i}": lib for i, lib in enumerate(args.plugin_lib)}},
    )

    if not args.onnx_only:
        ok, why = available()
        if not ok:
            print(f"trt-build: cannot build an engine here: {why} (--onnx-only still writes the "
                  f"{precision if precision != 'fp32' else 'FP16/INT8'} ONNX)", file=sys.stderr)
            return EXIT_USAGE

    onnx_for_build, calib_cache = args.model, None
    if needs_conversion:
        report = convert(args.model, precision, precision_onnx, args, spec if args.spec or args.onnx else None)
        print(accuracy_line(report))
        onnx_for_build = precision_onnx
        cache_file = Path(report.get("cache", {}).get("path") or args.calib_cache or "")
        calib_cache = cache_file if cache_file.is_file() else None
    if args.onnx_only:
        return 0

    sidecar = build_engine(
        onnx_for_build,
        engine_path,
        precision=target,
        shapes=args.shapes,
        workspace_gb=args.workspace,
        timing_cache=args.timing_cache,
        builder_opt_level=args.builder_opt_level,
        dla_core=args.dla_core,
        gpu_fallback=args.gpu_fallback,
        version_compatible=args.version_compatible,
        plugin_libs=args.plugin_lib,
        calib_cache=calib_cache,
        verbose=args.verbose,
        spec=spec if (args.spec or args.onnx) and onnx_for_build == args.model else None,
    )
    print(
        f"wrote {engine_path} ({sidecar['engine_bytes'] / 2**20:.1f} MiB, {sidecar['precision']}, TensorRT "
        f"{sidecar['tensorrt_version']} on {sidecar['gpu']['name']}, built in {sidecar['build_seconds']:.1f} s) "
        f"with {engine_path.name}.json and {engine_path.with_suffix('.layers.json').name}"
    )
    return 0


def _guarded(argv: list[str] | None) -> int:
    # TensorRT problems are one line too: missing TensorRT/GPU is exit 2, a model TensorRT rejects exit 1.
    try:
        return _main(argv)
    except TrtUnavailable as exc:
        print(f"trt-build: cannot build an engine here: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrtError as exc:
        print(f"trt-build: error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    return run_main("trt-build", _guarded, argv)


if __name__ == "__main__":
    sys.exit(main())
