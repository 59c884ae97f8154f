"""trt-calib: FP16 or INT8 (Q/DQ) ONNX from an FP32 export, with an accuracy report (JSON + tables)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from retinanet_trt.cli.common import (
    add_progress_arg,
    check_count,
    format_table,
    make_parser,
    run_main,
    seed,
    show_progress,
)
from retinanet_trt.fileio import check_outputs, write_bytes_atomic

EXAMPLES = """\
  trt-calib m.onnx --int8 --calib demo -o m.int8.onnx --json r.json
  trt-calib m.onnx --int8 --calib photos/ --calib-images 128 --method entropy --exclude p3 --sensitivity
  trt-calib m.onnx --int8 --calib instances_val.json --image-root val2017/ --cache m.calib.json
  trt-calib m.onnx --fp16 --calib demo -o m.fp16.onnx
"""


def _parser():  # type: ignore[no-untyped-def]
    from retinanet_trt.calib.convert import DEFAULT_CALIB_IMAGES, DEFAULT_EVAL_IMAGES, DEFAULT_METHOD
    from retinanet_trt.calib.int8 import METHOD_ALIASES, METHODS

    p = make_parser("trt-calib", __doc__ or "", EXAMPLES)
    p.add_argument("model", help="FP32 ONNX file written by trt-export")
    prec = p.add_mutually_exclusive_group(required=True)
    prec.add_argument("--int8", action="store_const", const="int8", dest="precision", help="INT8 with Q/DQ nodes")
    prec.add_argument("--fp16", action="store_const", const="fp16", dest="precision", help="FP16, FP32 I/O")
    p.add_argument("--calib", metavar="SET", help="image folder, COCO .json, or 'demo' (synthetic shapes); "
                   "required for --int8; for --fp16 it finds values too large for FP16")
    p.add_argument("-o", "--output", help="output ONNX (default: MODEL.int8.onnx / MODEL.fp16.onnx)")
    p.add_argument("--json", help="write the report JSON here")
    p.add_argument("--report", dest="json", help=argparse.SUPPRESS)  # the old name, for one release
    p.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES, metavar="N",
                   help=f"calibration images to use (default {DEFAULT_CALIB_IMAGES})")
    p.add_argument("--seed", type=seed, default=0, help="seed of the image sampling (default 0)")
    p.add_argument("--method", choices=[*METHODS, *METHOD_ALIASES], default=DEFAULT_METHOD,
                   help=f"INT8 activation range calibration (default {DEFAULT_METHOD}: min/max ranges, 'minmax' in ONNX Runtime)")
    p.add_argument("--exclude", action="append", default=[], metavar="WHAT",
                   help="keep in FP32: a group (backbone, fpn, p3..p7, head), a node name or a glob "
                        "('p3/cls_*'); repeat or comma-separate")
    p.add_argument("--quantize-predictors", action="store_true",
                   help="INT8: quantize the final cls/box convs too (kept FP32 by default)")
    p.add_argument("--cache", help="calibration cache file (default: OUTPUT with .calib.json); reused when "
                   "model, images, pre-process and method match, refused otherwise; the accuracy report is "
                   "cached beside it (.calib.report.json) and reused when every input and the output match")
    p.add_argument("--sensitivity", action="store_true", help="INT8: quantize one group at a time and recommend exclusions")
    p.add_argument("--eval-images", type=int, default=DEFAULT_EVAL_IMAGES, metavar="N",
                   help=f"images for COCO mAP when the set has annotations (default {DEFAULT_EVAL_IMAGES})")
    p.add_argument("--no-map", action="store_true", help="skip the COCO mAP evaluation")
    p.add_argument("--image-root", help="folder the COCO json's file_name entries are relative to (default: its folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_progress_arg(p)
    return p


def _db(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.1f}"


def print_report(r: dict[str, Any]) -> None:
    """The report's tables, for people."""
    prec = r["precision"]
    cal = r.get("calibration")
    if cal:
        skipped = f", skipped {cal['skipped_unreadable']} unreadable, {cal['skipped_unfit']} not fitting" \
            if cal["skipped_unreadable"] or cal["skipped_unfit"] else ""
        print(f"calibration: {cal['images_used']} images from {cal['set']} (seed {cal['seed']}), method {cal['method']}{skipped}")
    c = r.get("cache", {})
    if c.get("path"):
        state = "reused" if c["reused"] else "written"
        print(f"cache: {c['path']} ({state})" + (f"; replaced: {c['replaced']}" if c.get("replaced") else ""))
    if c.get("report_reused"):
        kept = "output unchanged, not rewritten" if c.get("output_reused") else "output rewritten, same bytes"
        print(f"scores: reused from {c['report_path']} (scored {c.get('scored_at', '?')}; same inputs, {kept})")
    elif c.get("report_note"):
        print(f"scores: {c['report_note']}")
    print(f"arithmetic: {r['arithmetic']}")
    print(f"kept FP32: {len(r['exclusions'])} nodes" + (f" ({', '.join(r['exclusions'][:4])}{', ...' if len(r['exclusions']) > 4 else ''})" if r["exclusions"] else ""))
    print(f"\n{prec} vs fp32 per FPN level, held-out photos ({', '.join(r['held_out']['photos'])}):")
    rows = [[row["level"], _db(row["cls_sqnr_db"]), f"{row['cls_cosine']:.6f}", row["cls_max_abs"],
             _db(row["box_sqnr_db"]), f"{row['box_cosine']:.6f}", row["box_max_abs"]] for row in r["levels"]]
    print(format_table(["level", "cls SQNR dB", "cls cosine", "cls max abs", "box SQNR dB", "box cosine", "box max abs"], rows))
    if "map" in r:
        d = r["map_detail"]
        print(f"\nCOCO mAP x100 ({d['images']} images, {d['set']}): fp32 {100 * r['map']['fp32']:.2f}  "
              f"{prec} {100 * r['map'][prec]:.2f}  (delta {100 * d['delta']:+.2f} points)")
    s = r.get("sensitivity")
    if s:
        print("\nsensitivity (INT8 on one group only):")
        headers = ["group", "nodes", "worst SQNR dB", "worst output", "noise share"]
        has_ap = any("ap_lost" in row for row in s["rows"])
        headers += ["AP x100", "AP lost x100"] if has_ap else []
        body = []
        for row in s["rows"]:
            line = [row["group"], row["nodes"], _db(row["sqnr_db"]), row["worst_output"], f"{100 * row['noise_share']:.0f}%"]
            line += [f"{100 * row['ap']:.2f}", f"{100 * row['ap_lost']:+.2f}"] if has_ap else []
            body.append(line)
        print(format_table(headers, body))
        rec = ", ".join(s["recommended_exclusions"]) or "none"
        print(f"recommended --exclude: {rec} ({s['rule']})")
    lint = r["lint"]
    print(f"\nlint: {'PASS' if lint['passed'] else 'FAIL'} ({lint['qdq_nodes']} Q/DQ nodes)")
    for problem in lint["problems"]:
        print(f"  {problem}")
    verb = "kept" if c.get("output_reused") else "wrote"  # an unchanged output is not rewritten
    print(f"{verb} {r['output']} in {r['times_s']['total_s']:.1f} s")


def _main(argv: list[str] | None) -> int:
    from retinanet_trt.calib.convert import ConvertOptions, convert, report_json

    args = _parser().parse_args(argv)
    src = Path(args.model)
    out = Path(args.output) if args.output else src.with_name(f"{src.stem}.{args.precision}.onnx")
    calib_file = args.calib if args.calib and Path(args.calib).is_file() else None
    check_outputs({"-o": out, "--json": args.json, "--cache": args.cache},
                  {"MODEL": src, "--calib": calib_file})
    check_count("--calib-images", args.calib_images)
    check_count("--eval-images", args.eval_images)
    opts = ConvertOptions(
        calib=args.calib, calib_images=args.calib_images, seed=args.seed,
        cache=Path(args.cache) if args.cache else None, method=args.method,
        exclude=[t.strip() for item in args.exclude for t in item.split(",") if t.strip()],
        default_exclusions=not args.quantize_predictors, sensitivity=args.sensitivity,
        evaluate_map=not args.no_map, eval_images=args.eval_images,
        image_root=Path(args.image_root) if args.image_root else None, progress=show_progress(args),
    )
    report = convert(src, args.precision, out, opts)
    print_report(report)
    if args.json:
        write_bytes_atomic(args.json, (report_json(report) + "\n").encode())
        print(f"report: {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("trt-calib", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
