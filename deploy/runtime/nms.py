"""Per-class non-maximum suppression as the source frameworks run it: boxes (M, 4) x1y1x2y2
float32, scores (M,), classes (M,) -> (D,) indices kept, best first (batched_nms).

Exactly what a box-by-box greedy loop per class keeps, with the spec's rule (IoU > or >= the
threshold), the legacy "+1" widths of Detectron and maskrcnn-benchmark, and ties to the earlier
candidate; computed as a sweep over x-overlapping pairs and a fixed point, with the greedy loop
itself for a class too dense for the pair list. Needs no torch.
"""

from __future__ import annotations

import numpy as np

# A class with more candidate pairs than this (a dense pile of boxes, which grows as its square)
# runs the greedy loop, which keeps few boxes there and so finishes in few steps.
_MAX_PAIRS_PER_CLASS = 200_000


def _iou(
    cols: tuple[np.ndarray, ...], areas: np.ndarray, i: np.ndarray | int, j: np.ndarray, one: np.float32
) -> np.ndarray:
    """IoU of boxes i and j (index arrays, or a scalar i) in float32, with the arithmetic and order
    of operations of the torchvision / maskrcnn-benchmark / Detectron CPU NMS kernels.

    cols: x1, y1, x2, y2 (M,) float32; areas (M,) = (x2 - x1 + one) * (y2 - y1 + one).
    """
    x1, y1, x2, y2 = cols
    w = np.maximum(np.float32(0.0), np.minimum(x2[i], x2[j]) - np.maximum(x1[i], x1[j]) + one)
    h = np.maximum(np.float32(0.0), np.minimum(y2[i], y2[j]) - np.maximum(y1[i], y1[j]) + one)
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return inter / (areas[i] + areas[j] - inter)


def _suppresses(iou: np.ndarray, threshold: float, rule: str) -> np.ndarray:
    # The C++ kernels compare the float IoU against a double threshold: compare in float64.
    # NaN (two empty boxes) suppresses nothing, as in those kernels.
    t = np.float64(threshold)
    return iou > t if rule == "gt" else iou >= t


def _greedy_nms(
    members: np.ndarray, cols: tuple[np.ndarray, ...], areas: np.ndarray, threshold: float, rule: str,
    one: np.float32,
) -> np.ndarray:
    """Greedy NMS over box indices `members` given in priority order -> the kept ones, in order."""
    remaining = members
    kept = []
    while remaining.size:
        top, rest = remaining[0], remaining[1:]
        kept.append(top)
        remaining = rest[~_suppresses(_iou(cols, areas, top, rest, one), threshold, rule)]
    return np.array(kept, dtype=np.int64)


def _nms_mask(boxes: np.ndarray, classes: np.ndarray, threshold: float, rule: str, plus_one: bool) -> np.ndarray:
    """Greedy per-class NMS of boxes (n, 4) float32 already in priority order -> keep mask (n,).

    A sweep along x lists the same-class pairs whose x-extents meet (only those can overlap),
    their IoUs are computed at once, and keep[j] = "no kept i < j suppresses j" is iterated to its
    fixed point (Cluster-NMS). That fixed point is unique and equals the greedy result, and each
    round settles at least one more box, so it ends after a few rounds on real detections. A class
    whose pair list would be huge (a dense pile of boxes, where greedy keeps few) runs the greedy
    loop instead.
    """
    n = classes.shape[0]
    one = np.float32(1.0 if plus_one else 0.0)
    cols = tuple(np.ascontiguousarray(boxes[:, c]) for c in range(4))
    x1, y1, x2, y2 = cols
    areas = (x2 - x1 + one) * (y2 - y1 + one)

    # Sweep order: by class, then x1. A later box in the same class can meet box p only if its
    # x1 < x2_p + one; count those with integer keys (class, number of x1 values below) so one
    # searchsorted serves every class. x2 + one is formed in float64 so it cannot round down.
    sweep = np.lexsort((x1, classes))
    cls_sorted = classes[sweep]
    all_x1 = np.sort(x1)
    keys = cls_sorted * n + np.searchsorted(all_x1, x1[sweep], side="left")
    position = np.arange(n)
    # Disjoint x-extents give IoU 0 (or NaN), which suppresses only for a threshold of 0 with "ge".
    if threshold > 0 or (rule == "gt" and threshold >= 0):
        reach_x = np.searchsorted(all_x1, x2[sweep].astype(np.float64) + float(one), side="left")
        end = np.searchsorted(keys, cls_sorted * n + reach_x, side="left")
    else:
        end = np.searchsorted(cls_sorted, cls_sorted, side="right")
    partners = np.maximum(end - position - 1, 0)

    keep = np.ones(n, dtype=bool)
    block_start = np.flatnonzero(np.r_[True, cls_sorted[1:] != cls_sorted[:-1]])
    block_pairs = np.add.reduceat(partners, block_start)
    for b in np.flatnonzero(block_pairs > _MAX_PAIRS_PER_CLASS):
        stop = block_start[b + 1] if b + 1 < block_start.size else n
        members = np.sort(sweep[block_start[b] : stop])  # back to priority order
        keep[members] = False
        keep[_greedy_nms(members, cols, areas, threshold, rule, one)] = True
        partners[block_start[b] : stop] = 0

    total = int(partners.sum())
    if total == 0:
        return keep
    first = np.repeat(position, partners)
    offset = np.arange(total) - np.repeat(np.cumsum(partners) - partners, partners)
    i, j = sweep[first], sweep[first + 1 + offset]
    hit = _suppresses(_iou(cols, areas, i, j, one), threshold, rule)
    i, j = i[hit], j[hit]
    src, dst = np.minimum(i, j), np.maximum(i, j)  # the higher-priority box suppresses
    settled = ~keep  # dropped by the greedy loop of a dense class
    while True:
        suppressed = settled.copy()
        suppressed[dst[keep[src]]] = True
        if np.array_equal(~suppressed, keep):
            return keep
        keep = ~suppressed


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, threshold: float, rule: str = "gt",
    plus_one: bool = False, max_keep: int | None = None,
) -> np.ndarray:
    """Greedy NMS within each class: boxes (M, 4) float32, scores (M,), classes (M,) int.

    rule "gt": IoU > threshold suppresses (torchvision, detectron2); "ge": IoU >= threshold
    (maskrcnn-benchmark, Detectron); plus_one: +1 widths and areas (the legacy kernels).
    Returns (D,) int64 indices of kept boxes by descending score, ties to the lower index, at most
    max_keep of them: exactly the head of what a box-by-box greedy loop per class keeps.

    Classes never meet, which is what torchvision's class-offset trick achieves, without offset
    coordinates losing float precision. Whether a box survives depends only on higher-priority
    boxes, so with max_keep only a prefix of the priority order is resolved, grown until it holds
    max_keep survivors.
    """
    m = scores.shape[0]
    boxes = np.asarray(boxes, dtype=np.float32)
    classes = np.asarray(classes, dtype=np.int64)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    priority = np.argsort(-scores, kind="stable")
    if max_keep is not None and max_keep <= 0:
        return priority[:0]
    n = m if max_keep is None else min(m, 4 * max_keep)
    while True:
        head = priority[:n]
        kept = head[_nms_mask(boxes[head], classes[head], threshold, rule, plus_one)]
        if max_keep is None:
            return kept
        if kept.size >= max_keep or n == m:
            return kept[:max_keep]
        n = min(m, 4 * n)
