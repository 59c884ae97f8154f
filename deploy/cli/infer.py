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
from typing import Any

from tqdm import tqdm

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
from retinanet_trt.errors import UsageError
from retinanet_trt.evaluate import detections_to_coco
from retinanet_trt.fileio import existing_ancestor, staged_folder
from retinanet_trt.runtime.detector import BACKENDS, Detector
from retinanet_trt.runtime.draw import draw_detections
from retinanet_trt.runtime.images import LoadFailure, find_images, load_images
from retinanet_trt.runtime.preprocess import shrunk_line

EXAMPLES = """\
  trt-infer demo photos/ -o out/infer
  trt-infer model.onnx street.jpg --backend ort-cpu -o out/
  trt-infer model.engine images/ --backend trt -o out/ --no-draw
  trt-infer trtexec_built.engine images/ --onnx model.onnx -o out/
"""
RESULTS = "detections.json"
ANNOTATED_SUFFIX = ".det.png"


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
    add_progress_arg(p)
    return p


def annotated_names(paths: list[Path]) -> dict[Path, str]:
    """Each image's annotated PNG, relative to -o: its path relative to the inputs' common
    folder, extension kept, plus .det.png, so a/x.png, b/x.png and x.jpg never share a file."""
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([r.parent for r in resolved]))
    return {p: f"{r.relative_to(common).as_posix()}{ANNOTATED_SUFFIX}" for p, r in zip(paths, resolved, strict=True)}


def _skip_line(failure: LoadFailure) -> str:
    # Loader messages already start with the file name; do not print it twice.
    why = failure.error if failure.error.startswith(failure.source) else f"{failure.source}: {failure.error}"
    return f"trt-infer: skipped {why}"


def _main(argv: list[str] | None) -> int:
    import json

    args = build_parser().parse_args(argv)
    if not 0.0 <= args.min_score <= 1.0:
        raise UsageError(f"--min-score {args.min_score}: scores are between 0 and 1")
    existing_ancestor(args.output, "-o")  # fail before any work
    paths = list(dict.fromkeys(find_images(args.inputs)))  # the same file named twice is one image
    if not paths:
        raise UsageError(f"no images found in {' '.join(args.inputs)}; give image files or folders with .jpg/.png files")
    names = annotated_names(paths)
    options, arithmetic = model_options(args)  # a file whose graph quantizes runs in simulated Q/DQ on ort-cpu
    detector = Detector.load(args.model, args.backend, **options)
    apply_oversize(detector, args)
    results: list[dict[str, Any]] = []
    failures: list[LoadFailure] = []
    metas = []
    with staged_folder(args.output, "-o", last=RESULTS) as staging:
        for image_id, path in enumerate(tqdm(paths, desc="infer", unit="img", disable=len(paths) < 2 or not show_progress(args)), start=1):
            loaded, failed = load_images([path])
            try:
                dets = detector(loaded)[0] if loaded else None
            except UsageError as exc:  # e.g. 20000x1 pixels: no size the spec's resize can make of it
                failed = [LoadFailure(str(path), str(exc))]
            if failed or dets is None:
                failures.extend(failed)
                continue
            annotated = None if args.no_draw else names[path]
            metas.extend(detector.last_metas)
            shrunk = detector.last_metas[0].shrunk
            results.extend({**r, "annotated": annotated, "shrunk_to_fit": shrunk}
                           for r in detections_to_coco(dets, image_id, file_name=str(path)))
            if annotated:
                png = staging / annotated
                png.parent.mkdir(parents=True, exist_ok=True)
                draw_detections(loaded[0].pixels, dets, args.min_score).save(png, format="PNG")
        for failure in failures:
            print(_skip_line(failure), file=sys.stderr)
        note = shrunk_line("trt-infer", metas, detector.fixed_input_hw)
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
