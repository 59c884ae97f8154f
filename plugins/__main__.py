"""Append the in-graph post-process to an existing plain ONNX (e.g. after trt-calib --fp16/--int8).

    python -m retinanet_trt.plugins model.int8.onnx -o model.int8.e2e.onnx [--nms efficientnms]

Precision conversions belong on the plain model: converted afterwards, the post-process graph
(anchors, index arithmetic, NMS) would be converted too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retinanet_trt.cli.common import make_parser, run_main
from retinanet_trt.fileio import check_outputs, write_json_atomic
from retinanet_trt.plugins.end2end import ANCHOR_MODES, NMS_KINDS, end2end_file

EXAMPLES = """\
  python -m retinanet_trt.plugins demo.onnx -o demo_e2e.onnx
  python -m retinanet_trt.plugins r50.int8.onnx -o r50.int8.e2e.onnx --nms efficientnms --json e2e.json
"""


def _main(argv: list[str] | None) -> int:
    p = make_parser("python -m retinanet_trt.plugins", (__doc__ or "").split("\n\n")[0], EXAMPLES)
    p.add_argument("model", type=Path, help="a plain trt-export ONNX (outputs cls_p*, box_p*)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the end-to-end ONNX to write")
    p.add_argument("--nms", choices=NMS_KINDS, default="onnx",
                   help="NonMaxSuppression (default; ONNX Runtime and TensorRT) or EfficientNMS_TRT (TensorRT only)")
    p.add_argument("--anchors", choices=ANCHOR_MODES, default="auto",
                   help="constant table (fixed input size), computed in-graph (any size), or auto")
    p.add_argument("--json", type=Path, help="write the report (conventions, check) as JSON here")
    p.add_argument("--report", type=Path, dest="json", help=argparse.SUPPRESS)  # the old name, for one release
    args = p.parse_args(argv)
    check_outputs({"-o": args.output, "--json": args.json}, {"MODEL": args.model})
    report = end2end_file(args.model, args.output, nms=args.nms, anchors=args.anchors)
    if args.json:
        write_json_atomic(args.json, report)
    inexact = ", ".join(c["name"] for c in report["conventions"] if not c["exact"])
    check = report["check"]
    verdict = check.get("note") or f"same {check['detections']} detections as the NumPy post-process (random input)"
    print(f"wrote {args.output}: {report['nms']} NMS, {report['anchors']} anchors, up to {report['max_detections']} "
          f"detections; {verdict}; not exact: {inexact} (docs/end2end.md)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("python -m retinanet_trt.plugins", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
