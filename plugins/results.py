"""The runner's side of an end-to-end model: its outputs -> Detections in original pixels, and the
comparison of two detection lists that the checks and tests use."""

from __future__ import annotations

from typing import Any

import numpy as np

from retinanet_trt.runtime.postprocess import _clip, _to_original
from retinanet_trt.runtime.types import Detections, ImageMeta
from retinanet_trt.spec import ModelSpec


def detections_from_end2end(outputs: dict[str, np.ndarray], spec: ModelSpec, metas: list[ImageMeta]) -> list[Detections]:
    """End-to-end outputs (num_dets (N,), boxes (N, D, 4), scores (N, D), labels (N, D)) -> one
    Detections per image in original pixels, with label ids and names, finishing what
    runtime.postprocess does after NMS: rescale, the clip of the spec, dropping empty boxes."""
    num = np.asarray(outputs["num_dets"]).reshape(-1)
    if len(metas) != num.shape[0]:
        raise ValueError(f"{len(metas)} ImageMeta for a batch of {num.shape[0]} images")
    post = spec.postprocess
    label_ids = np.asarray(spec.label_ids(), dtype=np.int64)
    names = spec.class_names()
    results = []
    for n, meta in enumerate(metas):
        count = int(num[n])
        boxes = np.asarray(outputs["boxes"][n, :count], dtype=np.float32)
        scores = np.asarray(outputs["scores"][n, :count], dtype=np.float32)
        classes = np.asarray(outputs["labels"][n, :count], dtype=np.int64)
        # The graph clipped to the padded input; the resized image may be smaller.
        if post.clip == "resized":
            boxes = boxes.copy()
            _clip(boxes, meta.resized_hw[1], meta.resized_hw[0])
        elif post.clip == "resized_minus1":
            boxes = boxes.copy()
            _clip(boxes, meta.resized_hw[1] - 1, meta.resized_hw[0] - 1)
        boxes = _to_original(boxes, meta, spec)
        if post.clip == "original":
            _clip(boxes, meta.original_hw[1], meta.original_hw[0])
        elif post.clip == "original_minus1":
            _clip(boxes, meta.original_hw[1] - 1, meta.original_hw[0] - 1)
        if post.drop_empty:
            nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, classes = boxes[nonempty], scores[nonempty], classes[nonempty]
        results.append(Detections(boxes=boxes, scores=scores, labels=label_ids[classes],
                                  names=[names[k] for k in classes]))
    return results




def compare_detections(reference: list[Detections], got: list[Detections], box_tol: float = 1e-3,
                       score_tol: float = 1e-5) -> dict[str, Any]:
    """Per image: counts, and whether every reference detection has a partner in `got` with the same
    label, box within box_tol and score within score_tol (matched as sets: near-equal scores may
    come out in either order). passed: same counts and all matched."""
    if len(reference) != len(got):
        raise ValueError(f"{len(reference)} reference images, {len(got)} end-to-end images")
    images = []
    for ref, out in zip(reference, got, strict=True):
        unused = np.ones(len(out), dtype=bool)
        unmatched, worst_box = 0, 0.0
        for box, score, label in zip(ref.boxes, ref.scores, ref.labels, strict=True):
            diff = np.abs(out.boxes - box).max(axis=1) if len(out) else np.zeros(0)
            close = unused & (out.labels == label) & (diff <= box_tol) & (np.abs(out.scores - score) <= score_tol)
            if close.any():
                j = int(np.flatnonzero(close)[0])
                unused[j] = False
                worst_box = max(worst_box, float(diff[j]))
            else:
                unmatched += 1
        images.append({"reference": len(ref), "end2end": len(out), "unmatched": unmatched, "max_box_diff": worst_box})
    passed = all(r["reference"] == r["end2end"] and r["unmatched"] == 0 for r in images)
    return {"passed": passed, "images": images, "detections": sum(r["reference"] for r in images),
            "max_box_diff": max((r["max_box_diff"] for r in images), default=0.0), "box_tol": box_tol,
            "score_tol": score_tol}

