"""COCO bbox evaluation (pycocotools) of a Detector over an annotated image set."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from retinanet_trt.errors import UsageError
from retinanet_trt.runtime.detector import Detector
from retinanet_trt.runtime.images import ImageLoadError
from retinanet_trt.runtime.types import Detections

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def detections_to_coco(dets: Detections, image_id: int, file_name: str | None = None) -> list[dict[str, Any]]:
    """COCO results entries: bbox [x, y, w, h] in original pixels, category_id = label id."""
    out = []
    for (x1, y1, x2, y2), score, label in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist()):
        entry: dict[str, Any] = {"image_id": image_id, "category_id": int(label),
                                 "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)}
        if file_name is not None:
            entry["file_name"] = file_name
        out.append(entry)
    return out


def load_coco(annotations: str | Path):  # type: ignore[no-untyped-def]
    from pycocotools.coco import COCO

    path = Path(annotations)
    if not path.is_file():
        raise UsageError(f"annotations file {path} not found; pass a COCO instances json")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            return COCO(str(path))
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as exc:
        raise UsageError(f"{path} is not a COCO annotations json ({type(exc).__name__}: {exc})") from exc


def coco_map(coco, results: list[dict[str, Any]]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """COCO stats as fractions: AP, AP50, AP75, APs, APm, APl and per-category AP by name."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {**dict.fromkeys(STAT_NAMES, 0.0), "per_category": {}, "num_detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes([{k: v for k, v in r.items() if k != "file_name"} for r in results])
        ev = COCOeval(coco, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats[:6])}
    precision = ev.eval["precision"]  # (iou thresholds, recall, category, area, max dets)
    per_category = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        per_category[coco.cats[cat_id]["name"]] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
    return {**stats, "per_category": per_category, "num_detections": len(results)}


def evaluate(detector: Detector, images_dir: str | Path, annotations: str | Path,
             max_images: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run `detector` on every image of the COCO file (files resolved under images_dir) and score it.

    Unreadable images are skipped and listed under "failures"."""
    coco = load_coco(annotations)
    images_dir = Path(images_dir)
    image_ids = sorted(coco.getImgIds())[:max_images]
    if not image_ids:
        raise UsageError(f"{annotations} lists no images")
    results: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    compute_ms: list[float] = []
    for image_id in tqdm(image_ids, desc="eval", unit="img", disable=not progress, leave=False):
        info = coco.imgs[image_id]
        path = images_dir / info["file_name"]
        try:
            dets = detector([path])[0]
        except ImageLoadError as exc:
            failures.append({"file": str(path), "error": str(exc)})
            continue
        compute_ms.append(detector.last_times_ms.get("compute", 0.0))
        results.extend(detections_to_coco(dets, image_id))
    if len(failures) == len(image_ids):
        raise UsageError(f"none of the {len(image_ids)} images under {images_dir} could be read (first: {failures[0]['error']})")
    scored = coco_map(coco, results)
    scored.update(num_images=len(image_ids) - len(failures), failures=failures,
                  median_compute_ms=float(np.median(compute_ms)) if compute_ms else None)
    return scored
