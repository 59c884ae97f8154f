"""trt-calib: FP16 or INT8 (Q/DQ) ONNX from an FP32 export, with an accuracy report (JSON + tables).

Exit status: 0 done, 2 a bad input (one line, nothing written), 1 the machine (disk full, ...), 3 an
accuracy budget (--max-drop / --min-sqnr) that the search could not meet (the file and the report
hold the closest one found, and say so).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from retinanet_trt.cli.common import (
    add_progress_arg,
    check_count,
    make_parser,
    read_spec_file,
    run_main,
    seed,
    show_progress,
)
from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import check_outputs, existing_ancestor, write_bytes_atomic
from retinanet_trt.tables import format_table

EXIT_BUDGET_NOT_MET = 3

EXAMPLES = """\
  trt-calib m.onnx --int8 --calib demo -o m.int8.onnx --json r.json
  trt-calib m.onnx --int8 --calib photos/ --calib-images 128 --method entropy --exclude p3 --sensitivity
  trt-calib m.onnx --int8 --calib instances_val.json --image-root val2017/ --cache m.calib.json
  trt-calib m.onnx --int8 --calib demo --method entropy --max-drop 0.001 --eval-images 300   # AP lost <= 0.1 pt
  trt-calib m.onnx --int8 --calib demo --method entropy --max-drop 0.001 --keep-as fp16       # kept layers in FP16
  trt-calib m.onnx --int8 --calib photos/ --min-sqnr 25                  # worst held-out output >= 25 dB
  trt-calib m.onnx --fp16 --calib demo -o m.fp16.onnx
  trt-calib modelopt.int8.onnx --onnx m.onnx --calib demo --json r.json  # score another tool's file
"""


def _parser():  # type: ignore[no-untyped-def]
    _require_ort()
    from retinanet_trt.calib.budget import KEEP_AS
    from retinanet_trt.calib.convert import DEFAULT_CALIB_IMAGES, DEFAULT_EVAL_IMAGES, DEFAULT_METHOD
    from retinanet_trt.calib.int8 import METHOD_ALIASES, METHODS

    p = make_parser("trt-calib", __doc__ or "", EXAMPLES)
    p.add_argument("model", help="FP32 ONNX file written by trt-export (or, with --onnx, an FP16 / INT8 file to score)")
    prec = p.add_mutually_exclusive_group()
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
    p.add_argument("--method", choices=[*METHODS, *METHOD_ALIASES],
                   help=f"INT8 activation range calibration (default {DEFAULT_METHOD}: min/max ranges, 'minmax' in ONNX Runtime)")
    p.add_argument("--exclude", action="append", default=[], metavar="WHAT",
                   help="keep in FP32: a group (backbone, fpn, p3..p7, head), a node name or a glob "
                        "('p3/cls_*'); repeat or comma-separate")
    p.add_argument("--quantize-predictors", action="store_true",
                   help="INT8: quantize the final cls/box convs too (kept FP32 by default)")
    p.add_argument("--cache", help="a calibration cache file of your own, reused when model, images, pre-process, "
                   "method and calibrator match, refused otherwise; the accuracy report is cached beside it "
                   "(.report.json). Default: ranges and reports in the cache folder (--cache-dir), by key")
    p.add_argument("--cache-dir", metavar="DIR", help="content-addressed cache folder for ranges and reports, whatever "
                   "the output is called (default $RETINANET_TRT_CACHE_DIR, else ~/.cache/retinanet-trt)")
    budget = p.add_argument_group("accuracy budget (INT8): keep the fewest layers in FP32 (or FP16) that meet it")
    budget.add_argument("--max-drop", type=float, metavar="FRACTION", help="COCO AP the INT8 file may lose against "
                        "FP32 on the set's held-out images, as a fraction (0.001 = 0.1 point); needs a COCO json or demo")
    budget.add_argument("--min-sqnr", type=float, metavar="DB", help="worst raw-output SQNR on the held-out photos "
                        "the INT8 file must reach, in dB (any calibration set)")
    budget.add_argument("--max-kept", type=int, metavar="N", help="most layers the budget may keep out of INT8 (default: no limit)")
    budget.add_argument("--keep-as", choices=KEEP_AS, help=f"what a kept layer computes in (default {KEEP_AS[0]}); fp16 "
                        "is cheaper on a GPU, and a layer whose values FP16 cannot hold stays fp32")
    other = p.add_argument_group("scoring a file another tool made (ModelOpt, ORT quantize_static): nothing is written")
    other.add_argument("--onnx", metavar="FP32.onnx", help="MODEL is an FP16 / INT8 file: score it against this FP32 "
                       "file it was made from (inputs and outputs must agree), with --calib for mAP")
    other.add_argument("--spec", metavar="SPEC.json", help="the model spec, for an FP32 file (or, with --onnx, files) "
                       "without this project's metadata")
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
        how = f"method {cal['method']}" if cal["method"] else "held out of the mAP set (the file's ranges are its own tool's)"
        print(f"calibration: {cal['images_used']} images from {cal['set']} (seed {cal['seed']}), {how}{skipped}")
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
    what = "float layers" if r.get("scored_only") else "kept FP32"
    print(f"{what}: {len(r['exclusions'])} nodes" + (f" ({', '.join(r['exclusions'][:4])}{', ...' if len(r['exclusions']) > 4 else ''})" if r["exclusions"] else ""))
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
    if r.get("budget"):
        print_budget(r["budget"])
    lint = r["lint"]
    print(f"\nlint: {'PASS' if lint['passed'] else 'FAIL'} ({lint['qdq_nodes']} Q/DQ nodes)")
    for problem in lint["problems"]:
        print(f"  {problem}")
    if r.get("scored_only"):
        print(f"scored {r['output']} ({prec}, read from its graph) against {r['source']} in {r['times_s']['total_s']:.1f} s")
        return
    verb = "kept" if c.get("output_reused") else "wrote"  # an unchanged output is not rewritten
    print(f"{verb} {r['output']} in {r['times_s']['total_s']:.1f} s")


def _figures(f: dict[str, Any]) -> str:
    text = f"worst SQNR {_db(f['worst_sqnr_db'])} dB ({f['worst_output']})"
    if "map" in f:
        text = f"mAP x100 {100 * f['map']:.2f} (drop {100 * f['drop']:.2f} points), " + text
    return text


def print_budget(b: dict[str, Any]) -> None:
    """The accuracy budget: met or not, the layers kept in float and what each costs and buys."""
    kept = b["kept"]
    share = f", {100 * b['kept_macs_share']:.1f}% of the MACs" if kept and b.get("kept_macs_share") else ""
    verdict = "met" if b["met"] else "NOT met"
    print(f"\naccuracy budget ({b['describe']}): {verdict} with {len(kept)} layer(s) kept in "
          f"{(b['kept_latency_class'] or b.get('keep_as', 'fp32')).upper()}{share}; {len(b['steps'])} files measured")
    print(f"  plain INT8: {_figures(b['plain'])}")
    print(f"  this file:  {_figures(b['final'])}")
    if kept:
        rows = [[k["layer"], k["latency_class"].upper(),
                 f"{100 * k['macs_share']:.1f}%" if k.get("macs_share") is not None else "?",
                 k.get("sensitivity_rank") or "?",
                 _db(k["int8_alone_sqnr_db"]) if k.get("int8_alone_sqnr_db") is not None else "?"] for k in kept]
        print(format_table(["kept layer", "latency class", "MACs", "sensitivity rank", "INT8 alone: worst SQNR dB"], rows))
    print(f"  steps ({b['ranking_measure'] if b.get('ranking') else 'no ranking needed'}):")
    print(format_table(["layers kept", "AP drop x100", "worst SQNR dB", "meets"],
                       [[st["layers_kept"], f"{100 * st['drop']:.2f}" if "drop" in st else "-", _db(st["worst_sqnr_db"]),
                         "yes" if st["met"] else "no"] for st in b["steps"]]))
    if b.get("note"):
        print(f"  {b['note']}")


def _budget(args: argparse.Namespace) -> Any:
    """The accuracy budget of --max-drop / --min-sqnr / --max-kept, or None."""
    from retinanet_trt.calib.budget import DEFAULT_MAX_KEPT, KEEP_AS, Budget

    if args.max_drop is None and args.min_sqnr is None:
        for flag, given in (("--max-kept", args.max_kept), ("--keep-as", args.keep_as)):
            if given is not None:
                raise UsageError(f"{flag} belongs to an accuracy budget; give --max-drop FRACTION or --min-sqnr DB too")
        return None
    return Budget(args.max_drop, args.min_sqnr, DEFAULT_MAX_KEPT if args.max_kept is None else args.max_kept,
                  args.keep_as or KEEP_AS[0])


def _score_only(args: argparse.Namespace, opts: Any) -> dict[str, Any]:
    """MODEL is an FP16 / INT8 file (any tool's), --onnx its FP32 source: the report only."""
    from retinanet_trt.calib.convert import score_file
    from retinanet_trt.spec.metadata import load_onnx
    from retinanet_trt.tensorrt.build import detect_precision

    for flag, given in (("-o", args.output), ("--exclude", args.exclude), ("--quantize-predictors", args.quantize_predictors),
                        ("--sensitivity", args.sensitivity), ("--cache", args.cache), ("--method", args.method),
                        ("--max-drop / --min-sqnr", opts.budget is not None)):
        if given:
            raise UsageError(f"{flag} does not apply with --onnx (scoring a file another tool made writes no model)")
    found = detect_precision(load_onnx(args.model))
    if args.precision and found != args.precision:
        raise UsageError(f"{args.model} computes in {found} (read from its graph), not {args.precision}")
    return score_file(Path(args.model), Path(args.onnx), opts)


def _require_ort() -> None:
    """trt-calib's calibrators and scoring are ONNX Runtime's: without it, one line naming the install."""
    from retinanet_trt.optional import requires

    with requires("onnxruntime", "trt-calib"):
        import onnxruntime  # noqa: F401


def _main(argv: list[str] | None) -> int:
    _require_ort()
    from retinanet_trt.calib.convert import DEFAULT_METHOD, ConvertOptions, convert, report_json

    args = _parser().parse_args(argv)
    src = Path(args.model)
    calib_file = args.calib if args.calib and Path(args.calib).is_file() else None
    scoring = args.onnx is not None
    if not scoring and not args.precision:
        raise UsageError("give --int8 or --fp16 (or --onnx FP32.onnx to score a file that is already converted)")
    if args.precision == "fp16" and not scoring:
        for flag, given in (("--method", args.method), ("--sensitivity", args.sensitivity),
                            ("--quantize-predictors", args.quantize_predictors)):
            if given:
                raise UsageError(f"{flag} applies to --int8 only (FP16 has no quantization ranges); drop it or give --int8")
    if args.image_root and not calib_file:
        raise UsageError(f"--image-root {args.image_root} applies to a COCO json --calib (where its file names are "
                         f"relative to); --calib {args.calib} needs none")
    out = None if scoring else Path(args.output) if args.output else src.with_name(f"{src.stem}.{args.precision}.onnx")
    check_outputs({"-o": out, "--json": args.json, "--cache": args.cache},
                  {"MODEL": src, "--calib": calib_file, "--onnx": args.onnx, "--spec": args.spec})
    check_count("--calib-images", args.calib_images)
    check_count("--eval-images", args.eval_images)
    if args.cache_dir:
        existing_ancestor(Path(args.cache_dir), "--cache-dir")  # a folder, or where one can be made
    opts = ConvertOptions(
        calib=args.calib, calib_images=args.calib_images, seed=args.seed,
        cache=Path(args.cache) if args.cache else None, cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        method=args.method or DEFAULT_METHOD,
        exclude=[t.strip() for item in args.exclude for t in item.split(",") if t.strip()],
        default_exclusions=not args.quantize_predictors, sensitivity=args.sensitivity,
        evaluate_map=not args.no_map, eval_images=args.eval_images,
        image_root=Path(args.image_root) if args.image_root else None,
        spec=read_spec_file(args.spec) if args.spec else None, budget=_budget(args), progress=show_progress(args),
    )
    report = _score_only(args, opts) if scoring else convert(src, args.precision, out, opts)
    print_report(report)
    if report.get("warning"):
        print(f"trt-calib: warning: {report['warning']}", file=sys.stderr)
    if args.json:
        write_bytes_atomic(args.json, (report_json(report) + "\n").encode())
        print(f"report: {args.json}")
    if report.get("budget") and not report["budget"]["met"]:
        print(f"trt-calib: {report['budget']['note']}", file=sys.stderr)
        return EXIT_BUDGET_NOT_MET
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("trt-calib", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
