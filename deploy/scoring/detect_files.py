"""A Detector over image files, as trt-infer runs it: COCO results entries in input order, the
images that failed on their own, and optionally an annotated PNG per image (drawn by a worker).
The host-pipeline benchmark times this same loop.

    results, failures, metas = detect_paths(detector, [Path("a/x.png"), Path("b/x.png")], staging=out)
"""

from __future__ import annotations

import os
from contextlib import closing
from pathlib import Path
from typing import Any

from tqdm import tqdm

from retinanet_trt.runtime.detector import Detector
from retinanet_trt.runtime.draw import draw_detections
from retinanet_trt.runtime.images import LoadedImage, LoadFailure
from retinanet_trt.runtime.pipeline import ImageResult
from retinanet_trt.runtime.types import ImageMeta
from retinanet_trt.scoring.evaluate import detections_to_coco

ANNOTATED_SUFFIX = ".det.png"


def annotated_names(paths: list[Path]) -> dict[Path, str]:
    """Each image's annotated PNG, relative to -o: its path relative to the inputs' common
    folder, extension kept, plus .det.png, so a/x.png, b/x.png and x.jpg never share a file."""
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([r.parent for r in resolved]))
    return {p: f"{r.relative_to(common).as_posix()}{ANNOTATED_SUFFIX}" for p, r in zip(paths, resolved, strict=True)}


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
