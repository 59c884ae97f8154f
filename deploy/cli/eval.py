"""trt-eval: COCO bbox AP of a model on an annotated image set or on the synthetic demo set."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from retinanet_trt.cli.common import (
    add_engine_spec_args,
    add_oversize_arg,
    add_progress_arg,
    apply_oversize,
    check_count,
    make_parser,
    model_options,
    run_main,
    seed,
    show_progress,
)
from retinanet_trt.cli.pipeline_args import add_pipeline_args, pipeline_options
from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import check_outputs, write_json_atomic
from retinanet_trt.runtime.detector import BACKENDS, Detector, default_backend
from retinanet_trt.runtime.resize_plan import shrunk_line
from retinanet_trt.scoring.evaluate import STAT_NAMES, evaluate
from retinanet_trt.tables import format_table

EXAMPLES = """\
  trt-eval demo --demo --demo-images 200 --seed 1
  trt-eval demo.onnx --demo --backend ort-cpu --json ap.json
  trt-eval model.onnx --images coco/val2017 --annotations coco/annotations/instances_val2017.json
"""


def build_parser():  # type: ignore[no-untyped-def]
    p = make_parser("trt-eval", "COCO bbox AP (AP, AP50, AP75, APs, APm, APl, per category) via pycocotools.", EXAMPLES)
    p.add_argument("model", help="an .onnx file, a TensorRT .engine, a checkpoint, or 'demo' (bundled model, torch)")
    p.add_argument("--images", type=Path, help="folder the annotations' file_name entries are relative to")
    p.add_argument("--annotations", type=Path, help="COCO instances json")
    p.add_argument("--demo", action="store_true", help="generate the synthetic val split and evaluate on it")
    p.add_argument("--demo-images", type=int, default=200, help="images in the generated split (default 200)")
    p.add_argument("--seed", type=seed, default=1, help="seed of the generated split (default 1)")
    p.add_argument("--backend", choices=BACKENDS + ("onnxruntime",), help="default: from the model file type")
    add_engine_spec_args(p)
    p.add_argument("--max-images", type=int, help="evaluate only the first N images")
    add_oversize_arg(p)
    add_pipeline_args(p)
    p.add_argument("--json", type=Path, help="write the stats as JSON here")
    add_progress_arg(p)
    return p


def print_stats(stats: dict, title: str) -> None:
    print(title)
    print(format_table(["metric", "value"], [[k, stats[k]] for k in STAT_NAMES]))
    if stats.get("per_category"):
        print(format_table(["category", "AP"], [[k, v] for k, v in stats["per_category"].items()]))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_outputs({"--json": args.json}, {"MODEL": args.model, "--annotations": args.annotations})
    if args.demo == bool(args.images or args.annotations):
        raise UsageError("give either --demo or both --images DIR and --annotations JSON")
    if not args.demo and not (args.images and args.annotations):
        raise UsageError("--images and --annotations go together")
    if args.max_images is not None and args.max_images < 1:
        raise UsageError(f"--max-images {args.max_images}: give at least 1 (or leave it out for all images)")
    if args.demo:
        check_count("--demo-images", args.demo_images)
    pipeline = pipeline_options(args)
    backend = args.backend or default_backend(str(args.model))
    # On the CPU, ORT's default optimisations fuse Q/DQ into integer kernels whose results depend on
    # the CPU; a file whose graph quantizes (any tool's) is scored with Q/DQ as written instead (the
    # arithmetic trt-calib uses), and the stats name it.
    options, arithmetic = model_options(args)
    detector = Detector.load(args.model, backend, **options)
    apply_oversize(detector, args)
    with tempfile.TemporaryDirectory(prefix="retinanet_trt_demo_") as tmp:
        if args.demo:
            from retinanet_trt.demo.synthetic import generate_dataset

            annotations = generate_dataset(tmp, args.demo_images, args.seed, split="val")
            images = annotations.parent
        else:
            annotations, images = args.annotations, args.images
            if not images.is_dir():
                raise UsageError(f"--images {images} is not a folder")
        stats = evaluate(detector, images, annotations, max_images=args.max_images, progress=show_progress(args),
                         **pipeline)
    if arithmetic:
        stats["arithmetic"] = arithmetic
    stats.update(model=str(args.model), backend=detector.backend.name,
                 dataset={"demo": args.demo, "images": args.demo_images if args.demo else stats["num_images"],
                          "seed": args.seed if args.demo else None})
    print_stats(stats, f"{args.model} [{detector.backend.name}] on {stats['num_images']} images")
    if arithmetic:
        print(f"arithmetic: {arithmetic}")
    for failure in stats["failures"]:
        print(f"trt-eval: skipped {failure['file']}: {failure['error']}", file=sys.stderr)
    note = shrunk_line("trt-eval", stats.pop("shrunk_metas"), detector.fixed_input_hw,
                       max_hw=detector.max_input_hw)
    if note:
        print(note, file=sys.stderr)
    if args.json:
        write_json_atomic(args.json, stats)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("trt-eval", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
