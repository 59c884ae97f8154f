"""COCO bbox evaluation (pycocotools) of a Detector over an annotated image set."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import read_json
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
    """A pycocotools COCO over a checked instances json; UsageError naming the first problem."""
    from pycocotools.coco import COCO

    path = Path(annotations)
    data = read_json(path, "annotations file", "pass a COCO instances json")
    check_coco(data, path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_coco(data: Any, path: Path) -> None:
    """The parts of a COCO instances json that evaluation reads: images (id, file_name),
    annotations (image_id, category_id, bbox [x, y, w, h] with w, h >= 0) and categories (id, name)."""
    def bad(what: str) -> UsageError:
        return UsageError(f"{path}: {what}; pass a COCO instances json (images, annotations, categories)")

    if not isinstance(data, dict):
        raise bad("the top level is not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise bad(f"no '{key}' list")
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            raise bad(f"images[{i}] needs an integer 'id' and a 'file_name'")
    categories = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            raise bad(f"categories[{i}] needs an integer 'id' and a 'name'")
        categories.add(cat["id"])
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), int) or not isinstance(ann.get("category_id"), int):
            raise bad(f"annotations[{i}] needs integer 'image_id' and 'category_id'")
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box)) and box[2] >= 0 and box[3] >= 0):
            raise bad(f"annotations[{i}].bbox = {box!r} is not [x, y, width, height] with width, height >= 0")
        if ann["category_id"] not in categories:
            raise bad(f"annotations[{i}].category_id {ann['category_id']} is not among the categories")
        ann.setdefault("area", float(box[2] * box[3]))  # pycocotools needs both for its area ranges
        ann.setdefault("iscrowd", 0)
        ann.setdefault("id", i + 1)
    image_ids = {im["id"] for im in data["images"]}
    if data["annotations"] and not any(a["image_id"] in image_ids for a in data["annotations"]):
        raise bad(f"none of its {len(data['annotations'])} annotations refer to the {len(image_ids)} listed images' ids")


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
             max_images: int | None = None, progress: bool = True, **pipeline: Any) -> dict[str, Any]:
    """Run `detector` on every image of the COCO file (files resolved under images_dir) and score it.

    Images run through Detector.stream (`pipeline`: batch_size, workers, max_queue_mb; decode and
    pre-process ahead, post-process behind, in worker threads). Unreadable images are skipped and
    listed under "failures"; images scaled down further to fit a fixed input (ImageMeta.shrunk) are
    listed under "shrunk_to_fit" (their ImageMeta under "shrunk_metas")."""
    if getattr(detector.backend, "simulated", False):
        raise UsageError("a simulated device returns recorded outputs, not this image's: it times the host "
                         "pipeline only and never measures accuracy; evaluate a real backend")
    if max_images is not None and max_images < 1:
        raise UsageError(f"--max-images {max_images}: give at least 1 (or leave it out for all images)")
    coco = load_coco(annotations)
    images_dir = Path(images_dir)
    image_ids = sorted(coco.getImgIds())[:max_images]
    if not image_ids:
        raise UsageError(f"{annotations} lists no images")
    if not coco.getAnnIds(imgIds=image_ids):
        raise UsageError(f"{annotations}: the {len(image_ids)} image(s) evaluated have no annotations, so AP is "
                         "undefined; check that annotation image_id values match the images' ids")
    results: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    compute_ms: list[float] = []
    shrunk = []
    paths = [images_dir / coco.imgs[image_id]["file_name"] for image_id in image_ids]
    with contextlib.closing(detector.stream(paths, **pipeline)) as stream:  # the workers stop with the loop
        for r in tqdm(stream, total=len(paths), desc="eval", unit="img", disable=not progress, leave=False):
            if isinstance(r.error, ImageLoadError):
                failures.append({"file": str(paths[r.index]), "error": str(r.error)})
                continue
            if r.error is not None:  # not the image's fault (e.g. a shape the engine cannot take): stop, as before
                raise r.error
            assert r.detections is not None and r.meta is not None
            compute_ms.append(r.times_ms.get("compute", 0.0))
            if r.meta.shrunk:
                shrunk.append(r.meta)
            results.extend(detections_to_coco(r.detections, image_ids[r.index]))
    if len(failures) == len(image_ids):
        raise UsageError(f"none of the {len(image_ids)} images under {images_dir} could be read (first: {failures[0]['error']})")
    scored = coco_map(coco, results)
    scored.update(num_images=len(image_ids) - len(failures), failures=failures, shrunk_metas=shrunk,
                  shrunk_to_fit=[m.source for m in shrunk],
                  median_compute_ms=float(np.median(compute_ms)) if compute_ms else None)
    return scored
