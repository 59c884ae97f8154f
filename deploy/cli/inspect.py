"""trt-inspect: what a checkpoint is (framework, spec, parameter count, key mapping), read safely."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from retinanet_trt.cli.common import make_parser, run_main
from retinanet_trt.errors import require_torch
from retinanet_trt.fileio import check_outputs, write_bytes_atomic, write_json_atomic
from retinanet_trt.importers import SOURCES, ImportResult, count_parameters, import_checkpoint
from retinanet_trt.importers.common import spec_summary
from retinanet_trt.spec import ModelSpec
from retinanet_trt.tables import format_table

EXAMPLES = """\
  trt-inspect model_final_bfca0b.pkl                    # detectron2 model zoo, framework auto-detected
  trt-inspect retinanet_resnet50_fpn_coco-eeacb38b.pth --source torchvision
  trt-inspect model_final.pkl --json inspect.json --spec-json spec.json
  trt-inspect retinanet-500_458.ckpt                   # MindSpore model zoo (.ckpt or .safetensors)
  trt-inspect retinanet.caffemodel --prototxt deploy.prototxt
"""


def build_parser():  # type: ignore[no-untyped-def]
    p = make_parser(
        "trt-inspect",
        "Read a RetinaNet checkpoint safely (no code in it runs) and print its source framework, the model "
        "spec it implies (architecture, anchors, box coder, pre/post-processing, labels), its parameter "
        "count and how its keys map onto this toolchain's model.",
        EXAMPLES,
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint: .pth/.pt/.pkl, MindSpore .ckpt/.safetensors, Caffe .caffemodel")
    p.add_argument("--prototxt", type=Path, help="the .prototxt of a Caffe .caffemodel (default: the one beside it with "
                   "the same stem, or deploy.prototxt)")
    p.add_argument("--source", default="auto", choices=SOURCES, metavar="NAME",
                   help=f"framework that wrote it: {', '.join(SOURCES)} (default: auto-detect from the key names)")
    p.add_argument("--json", type=Path, metavar="F", help="write everything printed as JSON to F")
    p.add_argument("--spec-json", type=Path, metavar="F", help="write the model spec as JSON to F")
    return p


def inspect_report(path: Path, result: ImportResult) -> dict[str, Any]:
    """The JSON form of what trt-inspect prints."""
    learned, frozen = count_parameters(result.spec)
    return {
        "checkpoint": str(path),
        "source": result.source,
        "notes": list(result.notes),
        "model": spec_summary(result.spec),
        "parameters": {"learned": learned, "frozen_norm_values": frozen},
        "tensors": len(result.state_dict),
        "mapping": [{"source": g.source, "target": g.target, "count": g.count} for g in result.mapping_summary],
        "unused_keys": list(result.unused_keys),
        "spec": result.spec.to_dict(),
    }


def describe_spec(spec: ModelSpec) -> list[str]:
    """One line per part of the spec, in the words the facts sheet uses."""
    b, a, c, pre, post = spec.backbone, spec.anchors, spec.box_coder, spec.preprocess, spec.postprocess
    labels = spec.label_ids()
    names = spec.class_names()
    clamp = "none" if c.scale_clamp is None else f"{c.scale_clamp:.5f}"
    thresh = ", ".join(f"P{lv} > {t:g}" for lv, t in zip(spec.levels, post.score_thresh, strict=True))
    topk = "none" if post.topk_per_level is None else post.topk_per_level
    max_det = "unlimited" if post.max_detections is None else post.max_detections
    sizes = "; ".join("/".join(f"{s:g}" for s in level) for level in a.sizes)
    h, f = spec.head, spec.fpn
    per_class = "" if post.max_per_class is None else f"; at most {post.max_per_class} per class"
    scores = (f"; scores are {'logits' if post.reported_scores == 'logit' else 'probabilities'}, thresholded as "
              f"{post.score_thresh_on}s" if post.score_thresh_on == "logit" else "")
    return [
        f"backbone    ResNet-{b.depth}, stride in the {'1x1' if b.stride_in_1x1 else '3x3'} conv, "
        f"norm {b.norm.kind} eps {b.norm.eps:g}, stem pool {'SAME -inf' if b.padding == 'tf_same' else b.stem_pool}, "
        f"padding {b.padding}" + (", ReLU before add" if b.relu_before_add else ""),
        f"fpn         {f.out_channels} channels, levels P{spec.levels[0]}-P{spec.levels[-1]}, "
        f"upsample {f.upsample}, P6 from {f.p6_from}" + ("" if f.bias else ", no biases"),
        f"head        {h.num_convs} convs x {h.channels}, norm {h.norm}, "
        f"{h.num_anchors} anchors x {h.num_classes} classes, "
        f"{'shared over levels' if h.shared else 'one head per level'}" + ("" if h.bias else ", no biases"),
        f"anchors     {a.generator} generator, {a.order}, aspect ratios (h/w) {a.aspect_ratios}, sizes {sizes}",
        f"box coder   weights {c.weights}, dw/dh clamp {clamp}, +1 {'yes' if c.plus_one else 'no'}",
        f"preprocess  {pre.channel_order} x{pre.scale:g}, mean {pre.mean}, std {pre.std}, resize {pre.resize} "
        + (f"{pre.fixed_size[0]}x{pre.fixed_size[1]}" if pre.resize == "fixed" and pre.fixed_size else
           f"{pre.min_size}/{pre.max_size} ({pre.rounding})")
        + f" with {pre.resize_impl}, pad to {pre.size_divisibility}"
        + (" (+32 when divisible)" if pre.pad_extra_when_divisible else ""),
        f"postprocess {thresh}; top-k per level {topk}; NMS {post.nms_iou:g} ({post.nms_rule}, "
        f"+1 areas {'yes' if post.nms_plus_one else 'no'}); max detections {max_det}{per_class}; clip {post.clip}"
        + ("; drop empty boxes" if post.drop_empty else "") + scores,
        f"labels      channel 0..{len(labels) - 1} -> ids {labels[0]}..{labels[-1]}, names {', '.join(names[:4])}, ...",
    ]


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    require_torch("trt-inspect")  # checkpoints become torch tensors
    check_outputs({"--json": args.json, "--spec-json": args.spec_json},
                  {"CHECKPOINT": args.checkpoint, "--prototxt": args.prototxt})
    result = import_checkpoint(args.checkpoint, source=args.source, prototxt=args.prototxt)
    report = inspect_report(args.checkpoint, result)
    params = report["parameters"]
    print(f"checkpoint  {args.checkpoint}")
    print(f"source      {result.source}")
    for note in result.notes:
        print(f"            {note}")
    print(f"model       {report['model']}")
    print(f"parameters  {params['learned']:,} learned (conv/GN weights and biases) + "
          f"{params['frozen_norm_values']:,} frozen-norm values")
    print("\n".join(describe_spec(result.spec)))
    total = sum(g.count for g in result.mapping_summary)
    print(f"\nkey mapping: {total} source keys -> {report['tensors']} tensors of our model "
          f"({len(result.unused_keys)} ignored; '#' stands for any number)")
    rows = [[g.source, g.target, g.count] for g in result.mapping_summary]
    print(format_table(["source key", "our key", "count"], rows))
    if args.json:
        write_json_atomic(args.json, report)
    if args.spec_json:
        write_bytes_atomic(args.spec_json, (result.spec.to_json(indent=2) + "\n").encode())
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("trt-inspect", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
