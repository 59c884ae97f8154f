"""Post-processing shared by every backend: raw head outputs -> detections in original pixels.

Per image and level: threshold the logits, keep the top-k (class, anchor) pairs, decode them and
clip where the source framework clips; then one per-class NMS over all levels, the max-detection
cap, and the mapping back to the original image (facts/checkpoint-formats.md §1f, 2e, 3e, 4e, 5e).

Determinism: wherever scores tie, the candidate earlier in the frameworks' flattened order wins:
level first, then (location, anchor, class) as in a (H*W*A, K) score matrix.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

import numpy as np

from retinanet_trt.runtime.anchors import grid_anchors
from retinanet_trt.runtime.box_coder import decode
from retinanet_trt.runtime.nms import batched_nms
from retinanet_trt.runtime.resize_plan import resize_scale, resized_hw
from retinanet_trt.runtime.types import Detections, ImageMeta
from retinanet_trt.spec import ModelSpec


@lru_cache(maxsize=1024)  # a handful of thresholds per model: skip the log and nextafter per level and image
def score_prefilter(thresh: float) -> np.float32:
    """The float32 logit bound below which sigmoid(x) (as float32) cannot exceed thresh.

    Comparing logits against it skips the sigmoid over the whole (A*K, H, W) map; it errs low
    (rounded down), and the exact test `score > thresh` is repeated on the survivors.
    """
    t = float(np.float32(thresh))
    if t <= 0.0:
        return np.float32(-np.inf)
    if t >= 1.0:
        return np.float32(np.inf)
    bound = math.log(t / (1.0 - t)) - 1e-9 * (1.0 + abs(math.log(t)))
    return np.nextafter(np.float32(bound), np.float32(-np.inf))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Sigmoid evaluated in float64 and rounded once to float32, so it does not depend on SIMD paths."""
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def _level_candidates(
    logits: np.ndarray, deltas: np.ndarray, anchors: np.ndarray, spec: ModelSpec, thresh: float, topk: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image, one level: logits (A*K, H, W), deltas (A*4, H, W), anchors (H*W*A, 4).

    Returns boxes (m, 4) float32, scores (m,) float32, classes (m,) int64, sorted by score
    descending, ties in (location, anchor, class) order. The maps stay in their NCHW layout:
    only the surviving entries are gathered, never the whole map transposed, and only the top-k
    are decoded.
    """
    num_a, num_k = spec.head.num_anchors, spec.head.num_classes
    hw = logits.shape[1] * logits.shape[2]
    flat = logits.reshape(-1)
    floor = score_prefilter(thresh)
    picked = None
    if spec.postprocess.score_thresh_on == "logit":  # MindSpore: the raw logit is the score
        idx = np.flatnonzero(flat > np.float32(thresh))
        picked = idx, flat[idx].astype(np.float32)
    elif topk is not None:
        bound = _topk_bound(flat, floor, topk)
        if bound is not None:
            picked = _candidates_above(flat, bound, thresh)
            if not _holds_topk(picked[1], bound, topk):
                picked = None  # the sample misjudged this map: take every candidate (same result, slower)
    idx, scores = picked if picked is not None else _candidates_above(flat, floor, thresh)

    channel, loc = np.divmod(idx, hw)
    anchor_of_loc, cls = np.divmod(channel, num_k)
    anchor_row = loc * num_a + anchor_of_loc  # row in the (H*W*A, 4) anchor list
    flat_order = anchor_row * num_k + cls  # position in the frameworks' (H*W*A, K) score matrix

    if topk is not None and scores.size > topk:
        sel = _topk_indices(scores, flat_order, topk)
        scores, flat_order, anchor_row, cls, loc, anchor_of_loc = (
            v[sel] for v in (scores, flat_order, anchor_row, cls, loc, anchor_of_loc)
        )
    order = np.lexsort((flat_order, -scores))
    scores, anchor_row, cls, loc, anchor_of_loc = (v[order] for v in (scores, anchor_row, cls, loc, anchor_of_loc))

    # deltas viewed as (A, 4, H*W): advanced indices around a slice give (m, 4).
    level_deltas = deltas.reshape(num_a, 4, hw)[anchor_of_loc, :, loc]
    boxes = decode(level_deltas, anchors[anchor_row], spec.box_coder)
    return boxes, scores, cls.astype(np.int64)


def _candidates_above(flat: np.ndarray, bound: np.float32, thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions in flat (n,) logits whose logit exceeds bound and whose score exceeds thresh, and
    those scores (float32): the sigmoid runs on the survivors of the logit test only."""
    idx = np.flatnonzero(flat > bound)
    scores = sigmoid(flat[idx])
    passed = scores > np.float32(thresh)
    return idx[passed], scores[passed]


# A map with at least 8 times this many entries gets a sampled top-k bound. An
# untrained or badly calibrated head passes 0.05 almost everywhere (R50 with random weights on a
# photo: 491k of P3's 3.5M pairs at 480x640), and the sigmoid, index arithmetic and partition
# over all of them cost 10x the single pass over the map that the bound leaves.
_SAMPLE_SIZE = 8192


def _topk_bound(flat: np.ndarray, floor: np.float32, topk: int) -> np.float32 | None:
    """A logit above which flat (n,) probably holds a few times topk entries, from a strided
    sample (deterministic); None when the map is small or the score floor is already tighter."""
    step = flat.size // _SAMPLE_SIZE
    if step < 8:  # a small map: the sample would cost about what it saves
        return None
    sample = flat[::step]
    # About r * step entries of the map exceed the sample's r-th largest value: aim at ~3 x topk.
    r = min(sample.size, 3 * topk // step + 8)
    bound = np.partition(sample, sample.size - r)[sample.size - r]
    return bound if bound > floor else None


def _holds_topk(scores: np.ndarray, bound: np.float32, topk: int) -> bool:
    """Whether candidates above a logit bound include the whole top-k of the map, ties included.

    True when there are at least topk of them and no logit at or below the bound can score as
    high as their k-th score s_k: x <= score_prefilter(prev(s_k)) means sigmoid(x) <= prev(s_k)
    < s_k, the same rounding-safe test the threshold uses. Then the k best (and every tie at the
    k-th score) lie above the bound, and top-k over them selects what top-k over the map would.
    """
    if scores.size < topk:
        return False
    kth = np.partition(scores, scores.size - topk)[scores.size - topk]
    return bool(bound <= score_prefilter(float(np.nextafter(kth, np.float32(-np.inf)))))


def _topk_indices(scores: np.ndarray, flat_order: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores; ties at the k-th score go to the lowest flat_order.

    np.partition is O(n), so thousands of candidates cost no full sort.
    """
    n = scores.size
    kth = np.partition(scores, n - k)[n - k]
    above = np.flatnonzero(scores > kth)
    ties = np.flatnonzero(scores == kth)
    ties = ties[np.argsort(flat_order[ties], kind="stable")[: k - above.size]]
    return np.concatenate([above, ties])


def _clip(boxes: np.ndarray, x_max: float, y_max: float, lower_only_xy1: bool = False) -> None:
    """Clamp boxes (M, 4) in place to [0, x_max] x [0, y_max]; yhenon clamps x1, y1 below and
    x2, y2 above only (lower_only_xy1)."""
    zero = np.float32(0.0)
    if lower_only_xy1:
        np.maximum(boxes[:, 0:2], zero, out=boxes[:, 0:2])
        np.minimum(boxes[:, 2], np.float32(x_max), out=boxes[:, 2])
        np.minimum(boxes[:, 3], np.float32(y_max), out=boxes[:, 3])
        return
    np.clip(boxes[:, 0::2], zero, np.float32(x_max), out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], zero, np.float32(y_max), out=boxes[:, 1::2])


def _to_original(boxes: np.ndarray, meta: ImageMeta, spec: ModelSpec | None = None) -> np.ndarray:
    """Scale boxes (M, 4) from resized-image to original-image pixels.

    Per axis (x by W_orig / W_resized, y by H), or with spec.postprocess.rescale "uniform" divided
    by the one factor the pre-process resized with (Detectron's `box_pred /= im_scale`, yhenon's
    `boxes /= scale`), recomputed from original_hw and spec.preprocess. A meta whose resized size
    is not what the spec's resize gives (a "fixed" stretch, sizes set by hand) has no such factor
    and is scaled per axis. Without a spec: per axis.
    """
    if spec is not None and spec.postprocess.rescale == "uniform":
        pre = spec.preprocess
        if pre.resize in ("shortest_edge", "none") and resized_hw(meta.original_hw, pre) == tuple(meta.resized_hw):
            return boxes / np.float32(resize_scale(meta.original_hw, pre))
    ratio_h = np.float32(meta.original_hw[0]) / np.float32(meta.resized_hw[0])
    ratio_w = np.float32(meta.original_hw[1]) / np.float32(meta.resized_hw[1])
    return boxes * np.array([ratio_w, ratio_h, ratio_w, ratio_h], dtype=np.float32)


def postprocess(
    outputs: dict[str, np.ndarray],
    spec: ModelSpec,
    metas: list[ImageMeta],
    level_times_ms: dict[str, float] | None = None,
) -> list[Detections]:
    """Raw outputs -> one Detections per image, boxes in original-image pixels.

    outputs: cls_p{l} (N, A*K, H_l, W_l) logits and box_p{l} (N, A*4, H_l, W_l) deltas for each
    level l of spec.levels (anchor-major channels). metas: N ImageMeta. If level_times_ms is
    given, the milliseconds spent on each level ("p3".."p7": threshold, top-k, decode) and on
    "nms" (merge, clip, NMS, cap, rescale) are added to it, summed over the batch.
    """
    post = spec.postprocess
    levels = spec.levels
    cls_maps = [outputs[f"cls_p{lv}"] for lv in levels]
    box_maps = [outputs[f"box_p{lv}"] for lv in levels]
    n_images = cls_maps[0].shape[0]
    if len(metas) != n_images:
        raise ValueError(f"{len(metas)} ImageMeta for a batch of {n_images} images")
    feature_hws = [(int(c.shape[2]), int(c.shape[3])) for c in cls_maps]
    label_ids = np.asarray(spec.label_ids(), dtype=np.int64)
    names = spec.class_names()
    timing = level_times_ms is not None
    level_ms = [0.0] * len(levels)
    nms_ms = 0.0

    results = []
    for n, meta in enumerate(metas):
        anchors = grid_anchors(spec, meta.input_hw, feature_hws)
        parts = []
        for i in range(len(levels)):
            t0 = time.perf_counter() if timing else 0.0
            parts.append(
                _level_candidates(cls_maps[i][n], box_maps[i][n], anchors[i], spec, post.score_thresh[i], post.topk_per_level)
            )
            if timing:
                level_ms[i] += (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter() if timing else 0.0
        results.append(_merge(parts, spec, meta, label_ids, names))
        if timing:
            nms_ms += (time.perf_counter() - t0) * 1e3

    if level_times_ms is not None:
        for lv, ms in zip(levels, level_ms, strict=True):
            level_times_ms[f"p{lv}"] = level_times_ms.get(f"p{lv}", 0.0) + ms
        level_times_ms["nms"] = level_times_ms.get("nms", 0.0) + nms_ms
    return results


def _first_per_class(classes: np.ndarray, cap: int) -> np.ndarray:
    """Mask (n,) keeping the first `cap` entries of each class of classes (n,), given in priority order."""
    order = np.argsort(classes, kind="stable")
    sorted_classes = classes[order]
    rank = np.empty(classes.size, dtype=np.int64)
    rank[order] = np.arange(classes.size) - np.searchsorted(sorted_classes, sorted_classes, side="left")
    return rank < cap


def _merge(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], spec: ModelSpec, meta: ImageMeta, label_ids: np.ndarray,
    names: list[str],
) -> Detections:
    """Levels of one image -> clip, NMS, cap, rescale, drop empty, in the order the spec's framework does it."""
    post = spec.postprocess
    boxes = np.concatenate([p[0] for p in parts])
    scores = np.concatenate([p[1] for p in parts])
    classes = np.concatenate([p[2] for p in parts])
    in_original = False
    # Where a framework clips decides whether clipped coordinates take part in NMS.
    if post.clip == "resized":  # torchvision: per level, before NMS
        _clip(boxes, meta.resized_hw[1], meta.resized_hw[0])
    elif post.clip == "resized_minus1":  # maskrcnn-benchmark
        _clip(boxes, meta.resized_hw[1] - 1, meta.resized_hw[0] - 1)
    elif post.clip == "padded_lower":  # yhenon: padded input, x1/y1 from below, x2/y2 from above
        _clip(boxes, meta.input_hw[1], meta.input_hw[0], lower_only_xy1=True)
    elif post.clip == "resized_to_original":  # MindSpore: clip to the [0, 1] frame, scale to the image, NMS there
        _clip(boxes, meta.resized_hw[1], meta.resized_hw[0])
        boxes = _to_original(boxes, meta, spec)
        in_original = True
    elif post.clip == "original_minus1":  # Detectron rescales and clips before its NMS
        boxes = _to_original(boxes, meta, spec)
        _clip(boxes, meta.original_hw[1] - 1, meta.original_hw[0] - 1)
        in_original = True

    per_class = post.max_per_class is not None
    keep = batched_nms(boxes, scores, classes, post.nms_iou, post.nms_rule, post.nms_plus_one,
                       None if per_class else post.max_detections)
    if per_class:  # MindSpore: the first max_boxes NMS keeps of each class, no overall cap by default
        keep = keep[_first_per_class(classes[keep], post.max_per_class)][: post.max_detections]
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    if post.score_thresh_on == "logit" and post.reported_scores == "probability":
        scores = sigmoid(scores)
    if not in_original:
        boxes = _to_original(boxes, meta, spec)
    if post.clip == "original":  # detectron2's detector_postprocess, after NMS and the cap
        _clip(boxes, meta.original_hw[1], meta.original_hw[0])
    if post.drop_empty:
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, classes = boxes[nonempty], scores[nonempty], classes[nonempty]
    return Detections(boxes=boxes, scores=scores, labels=label_ids[classes], names=[names[k] for k in classes])
