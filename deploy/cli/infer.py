"""trt-infer: detections for images or folders, as COCO-results JSON and annotated PNGs.

Outputs are staged in a hidden folder beside -o and moved into place only when the whole run
has succeeded, so a full disk, Ctrl-C or SIGTERM leaves neither PNGs without their
detections.json nor a detections.json of `[]`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from retinanet_trt.cli.common import (
    add_engine_spec_args,
    add_oversize_arg,
    add_progress_arg,
    apply_oversize,
    make_parser,
    model_options,
    run_main,
    show_progress,
)
from retinanet_trt.cli.pipeline_args import add_pipeline_args, pipeline_options
from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import existing_ancestor, staged_folder
from retinanet_trt.runtime.detector import BACKENDS, Detector
from retinanet_trt.runtime.images import LoadFailure, find_images
from retinanet_trt.runtime.resize_plan import shrunk_line
from retinanet_trt.scoring.detect_files import detect_paths

EXAMPLES = """\
  trt-infer demo photos/ -o out/infer
  trt-infer model.onnx street.jpg --backend ort-cpu -o out/
  trt-infer model.engine images/ --backend trt -o out/ --no-draw
  trt-infer trtexec_built.engine images/ --onnx model.onnx -o out/
"""
RESULTS = "detections.json"


def build_parser():  # type: ignore[no-untyped-def]
    p = make_parser("trt-infer", "Detect objects in images; write detections.json (COCO results, original-image "
                    "pixels, with file_name and the annotated PNG) and annotated PNGs into -o (--output).", EXAMPLES)
    p.add_argument("model", help="an .onnx file, a TensorRT .engine, a checkpoint, or 'demo' (bundled model)")
    p.add_argument("inputs", nargs="+", help="image files or folders of images")
    p.add_argument("--backend", choices=BACKENDS + ("onnxruntime",), help="default: from the model file type")
    add_engine_spec_args(p)
    p.add_argument("-o", "--output", type=Path, default=Path("out/infer"), help="output folder (default out/infer)")
    p.add_argument("--out", type=Path, dest="output", help=argparse.SUPPRESS)  # the old name, for one release
    p.add_argument("--min-score", type=float, default=0.3, help="lowest score drawn on the PNGs, 0..1 (JSON keeps all)")
    p.add_argument("--no-draw", action="store_true", help="write only detections.json")
    add_oversize_arg(p)
    add_pipeline_args(p)
    add_progress_arg(p)
    return p


def _skip_line(failure: LoadFailure) -> str:
    # Loader messages already start with the file name; do not print it twice.
    why = failure.error if failure.error.startswith(failure.source) else f"{failure.source}: {failure.error}"
    return f"trt-infer: skipped {why}"


def _main(argv: list[str] | None) -> int:
    import json

    args = build_parser().parse_args(argv)
    if not 0.0 <= args.min_score <= 1.0:
        raise UsageError(f"--min-score {args.min_score}: scores are between 0 and 1")
    pipeline = pipeline_options(args)
    existing_ancestor(args.output, "-o")  # fail before any work
    for entry in args.inputs:
        if Path(entry).is_dir() and args.output.exists() and os.path.samefile(entry, args.output):
            raise UsageError(f"-o {args.output} is the input folder {entry}: its annotated images would be read as "
                             "inputs by the next run; choose another -o folder")
    paths = list(dict.fromkeys(find_images(args.inputs)))  # the same file named twice is one image
    if not paths:
        raise UsageError(f"no images found in {' '.join(args.inputs)}; give image files or folders with .jpg/.png files")
    options, arithmetic = model_options(args)  # a file whose graph quantizes runs in simulated Q/DQ on ort-cpu
    detector = Detector.load(args.model, args.backend, **options)
    apply_oversize(detector, args)
    with staged_folder(args.output, "-o", last=RESULTS) as staging:
        results, failures, metas = detect_paths(detector, paths, staging=None if args.no_draw else staging,
                                                min_score=args.min_score, progress=show_progress(args), **pipeline)
        for failure in failures:
            print(_skip_line(failure), file=sys.stderr)
        note = shrunk_line("trt-infer", metas, detector.fixed_input_hw, max_hw=detector.max_input_hw)
        if note:
            print(note, file=sys.stderr)
        done = len(paths) - len(failures)
        if not done:
            raise UsageError(f"none of the {len(paths)} image(s) could be processed (see the lines above); nothing written")
        (staging / RESULTS).write_text(json.dumps(results, indent=2) + "\n")
    print(f"{done} image(s), {len(results)} detection(s) -> {args.output / RESULTS}"
          + (f"; {len(failures)} image(s) skipped" if failures else "")
          + (f"; arithmetic: {arithmetic}" if arithmetic else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("trt-infer", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
