"""trt-infer: detections for images or folders, as COCO-results JSON and annotated PNGs.

Outputs are staged in a hidden folder beside -o and moved into place only when the whole run
has succeeded, so a full disk, Ctrl-C or SIGTERM leaves neither PNGs without their
detections.json nor a detections.json of `[]`.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import closing
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
from retinanet_trt.cli.pipeline_args import add_pipeline_args, pipeline_options
from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import existing_ancestor, staged_folder
from retinanet_trt.runtime.detector import BACKENDS, Detector
from retinanet_trt.runtime.draw import draw_detections
from retinanet_trt.runtime.images import LoadedImage, LoadFailure, find_images
from retinanet_trt.runtime.pipeline import ImageResult
from retinanet_trt.runtime.preprocess import shrunk_line
from retinanet_trt.runtime.types import ImageMeta
from retinanet_trt.scoring.evaluate import detections_to_coco

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
    add_pipeline_args(p)
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


def detect_paths(detector: Detector, paths: list[Path], *, staging: Path | None = None, min_score: float = 0.3,
                 progress: bool = False, **pipeline: Any) -> tuple[list[dict[str, Any]], list[LoadFailure], list[ImageMeta]]:
    """trt-infer's loop over image files: (COCO results entries, failures, metas), in input order.

    Images run through Detector.stream (decode + pre-process ahead and post-process behind in
    worker threads; `pipeline`: batch_size, workers, max_queue_mb). With `staging`, each image's
    annotated PNG is drawn and written there by a worker. image_id is the position in `paths`
    from 1, also for the images around a failed one.
    """
    names = annotated_names(paths) if staging is not None else {}

    def annotate(result: ImageResult, image: LoadedImage) -> str:
        assert staging is not None and result.detections is not None
        name = names[paths[result.index]]
        png = staging / name
        png.parent.mkdir(parents=True, exist_ok=True)
        draw_detections(image.pixels, result.detections, min_score).save(png, format="PNG")
        return name

    results: list[dict[str, Any]] = []
    failures: list[LoadFailure] = []
    metas: list[ImageMeta] = []
    # closing: on Ctrl-C or an error here the workers stop before the staged folder is removed
    with closing(detector.stream(paths, on_result=annotate if staging is not None else None, **pipeline)) as stream:
        for r in tqdm(stream, total=len(paths), desc="infer", unit="img", disable=len(paths) < 2 or not progress):
            path = paths[r.index]
            if r.error is not None:  # unreadable, or e.g. 20000x1 pixels: no size the spec's resize can make of it
                failures.append(LoadFailure(str(path), str(r.error)))
                continue
            assert r.detections is not None and r.meta is not None
            metas.append(r.meta)
            results.extend({**e, "annotated": r.extra, "shrunk_to_fit": r.meta.shrunk}
                           for e in detections_to_coco(r.detections, r.index + 1, file_name=str(path)))
    return results, failures, metas


def _main(argv: list[str] | None) -> int:
    import json

    args = build_parser().parse_args(argv)
    if not 0.0 <= args.min_score <= 1.0:
        raise UsageError(f"--min-score {args.min_score}: scores are between 0 and 1")
    pipeline = pipeline_options(args)
    existing_ancestor(args.output, "-o")  # fail before any work
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
