"""trt-infer: detections for images or folders, as COCO-results JSON and annotated PNGs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from retinanet_trt.cli.common import make_parser, run_main
from retinanet_trt.errors import UsageError
from retinanet_trt.evaluate import detections_to_coco
from retinanet_trt.fileio import atomic_path, write_json_atomic
from retinanet_trt.runtime.detector import BACKENDS, Detector
from retinanet_trt.runtime.draw import draw_detections
from retinanet_trt.runtime.images import LoadFailure, find_images, load_images

EXAMPLES = """\
  trt-infer demo photos/ --out out/infer
  trt-infer model.onnx street.jpg --backend ort-cpu --out out/
  trt-infer model.engine images/ --backend trt --out out/ --no-draw
"""


def build_parser():  # type: ignore[no-untyped-def]
    p = make_parser("trt-infer", "Detect objects in images; write detections.json (COCO results, original-image "
                    "pixels, with file_name) and annotated PNGs into --out.", EXAMPLES)
    p.add_argument("model", help="an .onnx file, a TensorRT .engine, a checkpoint, or 'demo' (bundled model)")
    p.add_argument("inputs", nargs="+", help="image files or folders of images")
    p.add_argument("--backend", choices=BACKENDS + ("onnxruntime",), help="default: from the model file type")
    p.add_argument("--out", type=Path, default=Path("out/infer"), help="output folder (default out/infer)")
    p.add_argument("--min-score", type=float, default=0.3, help="lowest score drawn on the PNGs (JSON keeps all)")
    p.add_argument("--no-draw", action="store_true", help="write only detections.json")
    return p


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    paths = find_images(args.inputs)
    if not paths:
        raise UsageError(f"no images found in {' '.join(args.inputs)}; give image files or folders with .jpg/.png files")
    args.out.mkdir(parents=True, exist_ok=True)
    detector = Detector.load(args.model, args.backend)
    results: list[dict[str, Any]] = []
    failures: list[LoadFailure] = []
    for image_id, path in enumerate(tqdm(paths, desc="infer", unit="img", disable=len(paths) < 2), start=1):
        loaded, failed = load_images([path])
        if failed:
            failures.extend(failed)
            continue
        dets = detector(loaded)[0]
        results.extend(detections_to_coco(dets, image_id, file_name=str(path)))
        if not args.no_draw:
            png = args.out / f"{path.stem}.det.png"
            image = draw_detections(loaded[0].pixels, dets, args.min_score)
            with atomic_path(png) as tmp:
                image.save(tmp, format="PNG")
    write_json_atomic(args.out / "detections.json", results)
    for failure in failures:
        print(f"trt-infer: skipped {failure.source}: {failure.error}", file=sys.stderr)
    done = len(paths) - len(failures)
    print(f"{done} image(s), {len(results)} detection(s) -> {args.out / 'detections.json'}"
          + (f"; {len(failures)} unreadable image(s) skipped" if failures else ""))
    return 0 if done else 2


def main(argv: list[str] | None = None) -> int:
    return run_main("trt-infer", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
