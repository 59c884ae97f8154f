"""trt-export: a checkpoint, a preset or a spec -> a clean, checked ONNX file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from retinanet_trt.cli.common import make_parser, run_main, seed
from retinanet_trt.errors import UsageError, require_torch
from retinanet_trt.export import DEFAULT_OPSET
from retinanet_trt.fileio import check_outputs, read_json, write_json_atomic
from retinanet_trt.runtime.resize_plan import default_input_hw, fixed_input_fit
from retinanet_trt.runtime.uint8_input import INPUT_FORMATS, uint8_refusal
from retinanet_trt.spec import OVERSIZE_RULES, ModelSpec
from retinanet_trt.spec.presets import PRESETS, get_preset
from retinanet_trt.tables import format_mapping, format_table

if TYPE_CHECKING:  # torch is imported when a model is built, not for --help (about 2 s)
    from retinanet_trt.model.retinanet import RetinaNet

# Opset 13 brings the Resize/Pad forms the graph uses; 21 is the newest the exporter and ONNX
# Runtime here accept for this graph. Larger sides are typos that would exhaust memory first.
MIN_OPSET, MAX_OPSET = 13, 21
MAX_INPUT_SIDE = 8192
MAX_BATCH = 256

EXAMPLES = """\
  trt-export --demo -o demo.onnx
  trt-export --preset retinanet_r50_fpn --random-init --input-size 480 640 -o m.onnx --json r.json
  trt-export --preset r50_fpn1024_1class --random-init --input-size 480 640 --dynamic -o text.onnx
  trt-export model_final.pkl --source detectron2 --input-size 800 1344 -o d2.onnx
  trt-export --spec my_spec.json --random-init --seed 3 --input-size 256 320 -o custom.onnx
  trt-export --demo --end2end -o demo_e2e.onnx
  trt-export model_final.pth --spec overrides.json --class-names names.txt --set postprocess.nms_iou=0.6 -o m.onnx
  trt-export retinanet-500_458.ckpt -o ms.onnx       # MindSpore: 600x600 (640 for R152) from the spec
  trt-export text.caffemodel --prototxt text.prototxt --class-names names.txt --resize 480 640 -o text.onnx
"""


def build_parser():  # type: ignore[no-untyped-def]
    p = make_parser("trt-export", "Export a RetinaNet to ONNX: fold frozen BN, fix ceil-mode pooling, simplify, "
                    "tag node names by FPN level, store the spec, and check every output against PyTorch.", EXAMPLES)
    p.add_argument("checkpoint", nargs="?", help="checkpoint from a training framework (see trt-inspect)")
    p.add_argument("--source", default="auto", help="framework of CHECKPOINT (default: auto-detect)")
    p.add_argument("--prototxt", type=Path, help="the .prototxt of a Caffe .caffemodel CHECKPOINT (default: the one "
                   "beside it with the same stem, or deploy.prototxt)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help=f"named model: {', '.join(PRESETS)}")
    src.add_argument("--spec", type=Path, help="model spec JSON file")
    src.add_argument("--demo", action="store_true", help="the bundled demo model (trained on synthetic shapes)")
    p.add_argument("--random-init", action="store_true", help="random weights (for parity and speed work)")
    p.add_argument("--seed", type=seed, default=0, help="seed for --random-init and the parity input")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                   help="network input size (default: the spec's resize, padded to 32)")
    p.add_argument("--resize", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="resize the short side to MIN, the long side to at most MAX")
    p.add_argument("--resize-fixed", type=int, nargs=2, metavar=("H", "W"), help="stretch every image to H x W")
    p.add_argument("--oversize", choices=OVERSIZE_RULES, help="at a fixed --input-size, an image whose framework "
                   "resize does not fit: 'shrink' it further to fit (default; named by trt-infer/trt-eval) or "
                   "'refuse' it. The framework's resize is kept for every image that fits")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one spec field, e.g. --set postprocess.score_thresh=[0.3,0.3,0.3,0.3,0.3]")
    p.add_argument("--class-names", type=Path, metavar="FILE",
                   help="class names: one per line, or a COCO json's categories (their ids become the labels)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    p.add_argument("--input-format", choices=INPUT_FORMATS, default="float",
                   help="float: (N, 3, H, W) float32 normalised on the host (default); uint8: (N, H, W, 4) uint8 "
                        "(RGB + valid mask), normalised in the graph: 3x fewer bytes, no float pass on the host "
                        "(frameworks that resize the uint8 image only)")
    p.add_argument("--end2end", action="store_true", help="append decode, top-k and NMS: outputs num_dets, boxes, "
                   "scores, labels (docs/end2end.md)")
    p.add_argument("--nms", choices=["onnx", "efficientnms"], help="with --end2end: ONNX NonMaxSuppression "
                   "(default; ONNX Runtime and TensorRT) or the EfficientNMS_TRT plugin (TensorRT only)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .onnx path")
    p.add_argument("--json", type=Path, help="write the parity report as JSON here")
    p.add_argument("--report", type=Path, dest="json", help=argparse.SUPPRESS)  # the old name, for one release
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    return p


# Spec sections the weights fix: an override may not change them for a checkpoint or the demo.
ARCHITECTURE = ("backbone", "fpn", "head")


def _spec_file(path: Path) -> dict:  # type: ignore[type-arg]
    data = read_json(path, "spec file", "write one with trt-inspect --spec-json")
    if not isinstance(data, dict):
        raise UsageError(f"spec file {path} must hold a JSON object with backbone/fpn/head/... fields")
    return data


def _overrides(args, base: ModelSpec) -> list:  # type: ignore[no-untyped-def,type-arg]
    """(label, partial spec) pairs from the command line, in the order they apply. A fixed input
    size never changes the resize: the framework's own is kept (runtime.resize_plan.plan_resize)."""
    from retinanet_trt.spec import overrides as so

    items: list[tuple[str, dict]] = []  # type: ignore[type-arg]
    if args.checkpoint and args.spec:
        items.append((f"--spec {args.spec}", _spec_file(args.spec)))
    if args.resize:
        lo, hi = args.resize
        items.append(("--resize", {"preprocess": {"resize": "shortest_edge", "min_size": lo, "max_size": hi}}))
    if args.resize_fixed:
        items.append(("--resize-fixed", {"preprocess": {"resize": "fixed", "fixed_size": list(args.resize_fixed)}}))
    if args.oversize:
        items.append(("--oversize", {"preprocess": {"oversize": args.oversize}}))
    items += [(f"--set {item}", so.parse_set(item)) for item in args.set]
    if args.class_names:
        items.append((f"--class-names {args.class_names}", so.class_name_override(args.class_names, base.head.num_classes)))
    return items


def load_model(args) -> tuple[ModelSpec, RetinaNet, dict]:  # type: ignore[no-untyped-def]
    """Resolve checkpoint / preset / spec / demo into a spec and a model in eval mode, with the
    command line's overrides applied to the spec."""
    from retinanet_trt.model.retinanet import build_model
    from retinanet_trt.spec.overrides import apply_overrides

    if args.checkpoint or args.demo:
        if args.checkpoint and (args.preset or args.demo or args.random_init):
            raise UsageError("give either a CHECKPOINT or --preset/--demo/--random-init, not both "
                             "(--spec with a CHECKPOINT overrides parts of its spec)")
        if args.checkpoint:
            from retinanet_trt.importers import import_checkpoint

            result = import_checkpoint(args.checkpoint, source=args.source, prototxt=args.prototxt)
            spec = result.spec
            model = build_model(spec)
            model.load_state_dict(result.state_dict, strict=True)
            # The importer's remarks (e.g. how a Caffe port's dataflow differs from its framework's).
            info = {"checkpoint": str(args.checkpoint), "source": result.source, "import_notes": list(result.notes)}
        else:
            from retinanet_trt.demo import load_demo

            spec, model = load_demo()
            info = {"checkpoint": "bundled demo"}
        items = _overrides(args, spec)
        new = apply_overrides(spec, items, fixed=ARCHITECTURE) if items else spec
        return new, model.eval(), info
    if args.preset:
        spec = get_preset(args.preset)
    elif args.spec:
        spec = ModelSpec.from_dict(_spec_file(args.spec))
    else:
        raise UsageError("nothing to export: give a CHECKPOINT, --demo, or --preset/--spec with --random-init")
    if not args.random_init:
        raise UsageError(f"--preset/--spec builds an untrained {spec.name}; add --random-init to export it anyway")
    items = _overrides(args, spec)
    spec = apply_overrides(spec, items) if items else spec
    return spec, build_model(spec, seed=args.seed), {"random_init_seed": args.seed}


def print_report(report: dict, quiet: bool) -> None:
    if not quiet:
        for run in report["parity"]:
            h, w = run["input_hw"]
            rows = [[name, r["max_abs"], r["max_rel"], r["sqnr_db"]] for name, r in run["outputs"].items()]
            print(f"parity vs PyTorch at {h}x{w}:")
            print(format_table(["output", "max_abs", "max_rel", "sqnr_db"], rows))
        ops = ", ".join(f"{k} {v}" for k, v in report["op_counts"].items())
        print(f"ops: {ops}")
        print(f"fixes: {format_mapping(report['fixes']) if isinstance(report['fixes'], dict) else report['fixes']}")
        print(f"times (s): {format_mapping(report['times_s'])}; peak RSS {report['peak_rss_mb']} MB")
    verdict = "PASS" if report["passed"] else "FAIL"
    print(f"{verdict}: {report['output']} worst max_rel {report['worst_max_rel']:.3g} ({report['worst_output']}), "
          f"tolerance {report['parity_tolerance']:.0e}")


def check_export_args(args) -> None:  # type: ignore[no-untyped-def]
    """Refuse numbers the exporter cannot honour, before any model is built."""
    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise UsageError(f"--opset {args.opset}: supported opsets are {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
    if args.input_size and not all(32 <= side <= MAX_INPUT_SIDE for side in args.input_size):
        h, w = args.input_size
        raise UsageError(f"--input-size {h} {w}: each side must be between 32 and {MAX_INPUT_SIDE} pixels")
    if not 1 <= args.batch <= MAX_BATCH:
        raise UsageError(f"--batch {args.batch}: must be between 1 and {MAX_BATCH}")
    if args.resize and args.resize_fixed:
        raise UsageError("--resize and --resize-fixed are two resizes; give one")


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    require_torch("trt-export")
    from retinanet_trt.export.pipeline import ExportOptions, ParityError, export_onnx

    if args.nms and not args.end2end:
        raise UsageError("--nms chooses the NMS of the end-to-end graph; add --end2end")
    check_export_args(args)
    check_outputs({"-o": args.output, "--json": args.json},
                  {"CHECKPOINT": args.checkpoint, "--spec": args.spec, "--class-names": args.class_names,
                   "--prototxt": args.prototxt})
    spec, model, info = load_model(args)
    if args.input_format == "uint8" and uint8_refusal(spec.preprocess):
        raise UsageError(uint8_refusal(spec.preprocess))
    input_hw = tuple(args.input_size) if args.input_size else default_input_hw(spec)
    opts = ExportOptions(input_hw=input_hw, batch=args.batch, dynamic=args.dynamic, opset=args.opset,  # type: ignore[arg-type]
                         simplify=not args.no_simplify, parity_seed=args.seed, info=info)
    try:
        report = export_onnx(model, spec, args.output, opts)
    except ParityError as exc:
        if args.json:
            write_json_atomic(args.json, exc.report)
        print_report(exc.report, args.quiet)
        print(f"trt-export: error: {exc}", file=sys.stderr)
        return 1
    if args.end2end:
        from retinanet_trt.plugins.end2end import end2end_file

        report["end2end"] = end2end_file(args.output, args.output, nms=args.nms or "onnx", check_seed=args.seed)
    if args.input_format == "uint8":  # last: the checks above feed the float input
        from retinanet_trt.export.uint8_input import uint8_input_file

        report["uint8_input"] = uint8_input_file(args.output, args.output)
    report["import_notes"] = info.get("import_notes", [])
    if not args.quiet:
        for note in report["import_notes"]:
            print(f"trt-export: import: {note}")
    if not args.dynamic:
        report["resize_fit"] = fixed_input_fit(spec.preprocess, input_hw)
        if not args.quiet:
            print(f"trt-export: {report['resize_fit']['summary']}")
    if args.json:
        write_json_atomic(args.json, report)
    print_report(report, args.quiet)
    if args.end2end:
        e2e, check = report["end2end"], report["end2end"]["check"]
        verdict = check.get("note") or f"same {check['detections']} detections as the NumPy post-process (random input)"
        print(f"end-to-end: {e2e['nms']} NMS, {e2e['anchors']} anchors, up to {e2e['max_detections']} detections; {verdict}")
    if args.input_format == "uint8":
        check = report["uint8_input"]["network_input_check"]
        outputs = report["uint8_input"].get("outputs_check", {})
        print(f"uint8 input: (N, H, W, 4) uint8, normalised in the graph; network input vs the host pre-process on "
              f"{check['images']} images: max_abs {check['max_abs']:.3g}{' (bit-exact)' if check['bit_exact'] else ''}"
              + ("; outputs identical to the float input's" if outputs.get("identical") else
                 f"; outputs max_abs {max(outputs.get('max_abs', {0: 0.0}).values()):.3g}" if outputs else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("trt-export", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
