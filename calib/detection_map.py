"""COCO mAP of FP32 vs converted files on images the calibration did not use.

`demo` is scored on the synthetic generator's `val` split (the calibration draws from its own
`calib` split); a COCO json on its annotated images that were not picked for calibration. The
runner's own Detector (ONNX Runtime, CPU) and evaluate module do the work, so the figures are
those a user of the file would get; the session computes in ACCURACY_ARITHMETIC (Q/DQ simulated
as written, no fused integer kernels), so they do not depend on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retinanet_trt.calib.sets import CalibImages, CalibSource

DEMO_EVAL_SEED = 0
DEMO_EVAL_SPLIT = "val"


@dataclass
class EvalSet:
    """An annotated image set: images_dir + COCO annotations; `_tmp` keeps generated files alive."""

    images_dir: Path
    annotations: Path
    num_images: int
    describe: str
    _tmp: Any = field(default=None, repr=False)

    @classmethod
    def for_source(cls, source: CalibSource, images: CalibImages, max_images: int) -> EvalSet | None:
        """The evaluation set that goes with a calibration set; None when it has no annotations."""
        if source.kind == "demo":
            from retinanet_trt.demo.synthetic import generate_dataset

            tmp = tempfile.TemporaryDirectory(prefix="retinanet_trt.eval.")
            ann = generate_dataset(tmp.name, max_images, DEMO_EVAL_SEED, DEMO_EVAL_SPLIT)
            return cls(ann.parent, ann, max_images,
                       f"synthetic shapes '{DEMO_EVAL_SPLIT}' split, seed {DEMO_EVAL_SEED}", tmp)
        held_set = _coco_held_out(source, images, max_images)
        if held_set is None:
            return None
        coco, held, note = held_set
        ids = {im["id"] for im in held}
        tmp = tempfile.TemporaryDirectory(prefix="retinanet_trt.eval.")
        subset = Path(tmp.name) / "eval.json"
        subset.write_text(json.dumps({**coco, "images": held,
                                      "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}))
        # file_name entries stay relative to the original root, so images resolve from there
        return cls(source.root or source.annotations.parent, subset, len(held), f"{source.name}: {note}", tmp)


def _coco_held_out(source: CalibSource, images: CalibImages, max_images: int
                   ) -> tuple[dict[str, Any], list[dict[str, Any]], str] | None:
    """(coco json, the image entries to score, note) for an annotated COCO set; None without annotations."""
    if source.kind != "coco" or source.annotations is None:
        return None
    coco = json.loads(source.annotations.read_text())
    if not coco.get("annotations"):
        return None
    used = set(images.sources)
    by_id = dict(zip(source.image_ids, source.paths, strict=True))
    held = [im for im in sorted(coco["images"], key=lambda im: im["id"]) if str(by_id.get(im["id"])) not in used]
    note = "annotated images not used for calibration"
    if not held:  # every image calibrated: score them all, and say so
        held, note = sorted(coco["images"], key=lambda im: im["id"]), "all images (all were also used for calibration)"
    return coco, held[:max_images], note


def eval_set_digest(source: CalibSource, images: CalibImages, max_images: int) -> str | None:
    """sha256 over what the mAP of `source` is computed on: for a COCO set its annotations file and
    the bytes of each image scored (demo images come from code, which report caches hash); None when
    the set has no annotations."""
    held_set = _coco_held_out(source, images, max_images)
    if held_set is None:
        return None
    _, held, _ = held_set
    digest = hashlib.sha256(hashlib.sha256(source.annotations.read_bytes()).digest())  # type: ignore[union-attr]
    by_id = dict(zip(source.image_ids, source.paths, strict=True))
    for im in held:
        path = by_id.get(im["id"])
        try:
            digest.update(hashlib.sha256(path.read_bytes()).digest() if path else b"missing")
        except OSError:
            digest.update(b"unreadable")
    return digest.hexdigest()


def map_scores(model: Path, evaluation: EvalSet, progress: bool = True, spec: Any = None) -> dict[str, Any]:
    """COCO AP, AP50, AP75 (fractions, as COCO reports them) of an ONNX file on the evaluation set,
    with ONNX Runtime on the CPU. spec: for a file without this project's metadata."""
    from retinanet_trt.runtime.backends.ort_backend import ACCURACY_ARITHMETIC
    from retinanet_trt.runtime.detector import Detector
    from retinanet_trt.scoring.evaluate import evaluate

    detector = Detector.load(str(model), backend="ort-cpu", arithmetic=ACCURACY_ARITHMETIC,
                             **({"spec": spec} if spec is not None else {}))
    try:
        scored = evaluate(detector, evaluation.images_dir, evaluation.annotations, progress=progress)
    finally:
        detector.close()
    return {"AP": scored["AP"], "AP50": scored["AP50"], "AP75": scored["AP75"], "num_detections": scored["num_detections"]}
