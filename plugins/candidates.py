"""The candidates of every FPN level in-graph: threshold on logits, TopK, gather, sigmoid, decode, clip."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.plugins.graph import FLOAT, GraphBuilder
from retinanet_trt.plugins.thresholds import logit_threshold
from retinanet_trt.runtime.anchors import cell_anchors, grid_anchors
from retinanet_trt.spec import ModelSpec

MIN_OPSET = 13  # Unsqueeze/ReduceSum/Split take axes and sizes as inputs from 13 on
TRT_TOPK_MAX_K = 3840  # TensorRT's TopK limit (NvInfer.h, facts/tensorrt.md §4)


@dataclass
class Candidates:
    """Tensor names of the candidates of every level, concatenated (M = sum of the k per level).

    boxes (N, M, 4) float32 decoded and clipped as far as the graph can; scores (N, M) float32,
    -1 where not valid; classes (N, M) int64 class channels; m_static: M when it is known."""

    boxes: str
    scores: str
    classes: str
    m_static: int | None


@dataclass
class _Shapes:
    """What is known about sizes when the graph is built; None where only the running graph knows."""

    input_hw: tuple[int, int] | None
    feature_hws: list[tuple[int, int]] | None
    image: str | None  # the network input, for Shape when sizes are dynamic


def max_detections(spec: ModelSpec) -> int:
    """D, the padded number of output rows: max_detections, else every candidate (k per level)."""
    post = spec.postprocess
    if post.max_detections is not None:
        return int(post.max_detections)
    if post.topk_per_level is None:
        raise UsageError("an end-to-end model needs postprocess.max_detections or topk_per_level to size its outputs")
    return int(post.topk_per_level) * len(spec.levels)


def _input_hw_tensors(b: GraphBuilder, shapes: _Shapes) -> tuple[str, str]:
    """(H, W) of the network input as float32 scalars-in-1-D tensors."""
    if shapes.input_hw is not None:
        return b.const([shapes.input_hw[0]], np.float32, "input_h"), b.const([shapes.input_hw[1]], np.float32, "input_w")
    assert shapes.image is not None
    return b.cast(b.shape_dim(shapes.image, 2), FLOAT), b.cast(b.shape_dim(shapes.image, 3), FLOAT)


def _level_candidates(
    b: GraphBuilder, spec: ModelSpec, i: int, cls: str, box: str, shapes: _Shapes, anchors_mode: str
) -> tuple[str, str, str, str, str, int | None]:
    """One level -> (logits (N,k), valid (N,k), classes (N,k), deltas (N,k,4), anchors (N,k,4), k if known).

    The k candidates come out in the frameworks' flat order (anchor row * K + class), not by score:
    the concatenation of all levels is then ordered by (level, flat order), which is how the
    reference breaks score ties, and NMS and the final TopK prefer the lower position on ties.
    """
    num_a, num_k = spec.head.num_anchors, spec.head.num_classes
    topk = spec.postprocess.topk_per_level
    logits = b.reshape(cls, [0, -1])  # (N, A*K*H*W), channel-major: index = (a*K + k)*HW + loc
    if shapes.feature_hws is not None:
        h_l, w_l = shapes.feature_hws[i]
        hw = b.const(h_l * w_l, np.int64, "hw")
        total = num_a * num_k * h_l * w_l
        k_static: int | None = min(topk, total) if topk is not None else total
        k = b.const([k_static], np.int64, "k")
    else:
        hw = b.op("Mul", [b.shape_dim(cls, 2), b.shape_dim(cls, 3)])
        total_t = b.shape_dim(logits, 1)
        k_static = None
        k = b.op("Min", [b.const([topk], np.int64, "k"), total_t]) if topk is not None else total_t

    # Top-k on logits: the sigmoid is monotonic, so this is the top-k by score without a sigmoid
    # over the whole map; entries that fail the threshold are only marked invalid below.
    values, index = b.op("TopK", [logits, k], n_out=2, axis=1, largest=1, sorted=1)
    channel = b.op("Div", [index, hw])
    loc = b.op("Sub", [index, b.op("Mul", [channel, hw])])
    c_k = b.const(num_k, np.int64, "num_classes")
    c_a = b.const(num_a, np.int64, "num_anchors")
    anchor = b.op("Div", [channel, c_k])
    klass = b.op("Sub", [channel, b.op("Mul", [anchor, c_k])])
    flat = b.op("Add", [b.op("Mul", [b.op("Add", [b.op("Mul", [loc, c_a]), anchor]), c_k]), klass])
    # Sort the k candidates by flat order. TensorRT's TopK takes float inputs only: the key is
    # exact while the map has fewer than 2^24 entries (convention_report says when it has not).
    _, perm = b.op("TopK", [b.cast(flat, FLOAT), k], n_out=2, axis=1, largest=0, sorted=1)
    flat = b.op("GatherElements", [flat, perm], axis=1)
    values = b.op("GatherElements", [values, perm], axis=1)
    # Re-derive the parts from the sorted flat index: a few integer ops instead of four gathers.
    row = b.op("Div", [flat, c_k])  # anchor row = loc * A + a
    klass = b.op("Sub", [flat, b.op("Mul", [row, c_k])])
    loc = b.op("Div", [row, c_a])
    anchor = b.op("Sub", [row, b.op("Mul", [loc, c_a])])
    valid = b.op("Greater", [values, b.const(logit_threshold(spec.postprocess.score_thresh[i]), np.float32, "logit_thresh")])

    # Deltas of candidate (a, loc) sit at channels a*4 + c, c = 0..3: gather 4 entries per candidate.
    coord = b.const(np.arange(4, dtype=np.int64).reshape(1, 1, 4), np.int64, "coord")
    channel4 = b.op("Add", [b.op("Mul", [b.unsqueeze(anchor, [2]), b.const(4, np.int64, "four")]), coord])
    delta_index = b.op("Add", [b.op("Mul", [channel4, hw]), b.unsqueeze(loc, [2])])
    deltas = b.op("GatherElements", [b.reshape(box, [0, -1]), b.reshape(delta_index, [0, -1])], axis=1)
    deltas = b.reshape(deltas, [0, -1, 4])

    if anchors_mode == "constant":
        assert shapes.input_hw is not None and shapes.feature_hws is not None
        table = grid_anchors(spec, shapes.input_hw, shapes.feature_hws)[i]
        anchors = b.op("Gather", [b.const(table, np.float32, "anchors"), row], axis=0)
    else:
        anchors = _computed_anchors(b, spec, i, cls, loc, anchor, shapes)
    return values, valid, klass, deltas, anchors, k_static


def _computed_anchors(b: GraphBuilder, spec: ModelSpec, i: int, cls: str, loc: str, anchor: str,
                      shapes: _Shapes) -> str:
    """Anchors (N, k, 4) of the candidates from the cell anchors and the grid position, as
    runtime.anchors builds them: cell + ((x + offset) * stride_x, (y + offset) * stride_y, ...)."""
    cell = b.const(cell_anchors(spec, i), np.float32, "cell_anchors")
    cell = b.op("Gather", [cell, anchor], axis=0)  # (N, k, 4)
    if shapes.feature_hws is not None:
        width = b.const(shapes.feature_hws[i][1], np.int64, "w")
    else:
        width = b.shape_dim(cls, 3)
    y = b.op("Div", [loc, width])
    x = b.op("Sub", [loc, b.op("Mul", [y, width])])
    if spec.anchors.generator == "torchvision":
        # torchvision's stride is input // feature per axis, so P6/P7 of odd sizes keep its grid.
        assert shapes.image is not None
        stride_y = b.cast(b.op("Div", [b.shape_dim(shapes.image, 2), b.shape_dim(cls, 2)]), FLOAT)
        stride_x = b.cast(b.op("Div", [b.shape_dim(shapes.image, 3), b.shape_dim(cls, 3)]), FLOAT)
    else:
        stride_y = stride_x = b.const(float(spec.anchors.strides[i]), np.float32, "stride")
    offset = b.const(0.5 if spec.anchors.generator == "yhenon" else 0.0, np.float32, "offset")
    shift_x = b.unsqueeze(b.op("Mul", [b.op("Add", [b.cast(x, FLOAT), offset]), stride_x]), [2])
    shift_y = b.unsqueeze(b.op("Mul", [b.op("Add", [b.cast(y, FLOAT), offset]), stride_y]), [2])
    shifts = b.op("Concat", [shift_x, shift_y, shift_x, shift_y], axis=2)
    return b.op("Add", [shifts, cell])


def _sigmoid(b: GraphBuilder, x: str) -> str:
    """sigmoid in float32 within 2 ulps of the reference (float64 rounded to float32).

    ONNX Runtime's Sigmoid kernel is accurate to ~1e-7 absolute (26 ulps at 0.05), which would
    reorder near-equal scores; r = e / (1 + e) with e = exp(-|x|), and 1 - r for x >= 0, keeps
    the saturated scores near 1, where ties are frequent, correctly rounded.
    """
    one = b.const(1.0, np.float32, "one")
    e = b.op("Exp", [b.op("Neg", [b.op("Abs", [x])])])
    r = b.op("Div", [e, b.op("Add", [e, one])])
    positive = b.op("GreaterOrEqual", [x, b.const(0.0, np.float32, "zero")])
    return b.op("Where", [positive, b.op("Sub", [one, r]), r])


def _decode(b: GraphBuilder, spec: ModelSpec, deltas: str, anchors: str) -> str:
    """deltas (N, M, 4) and anchors (N, M, 4) -> boxes (N, M, 4), the operations of
    runtime.box_coder.decode in the same order, so float32 rounding matches."""
    coder = spec.box_coder
    split = b.const([1, 1, 1, 1], np.int64, "split")
    ax1, ay1, ax2, ay2 = b.op("Split", [anchors, split], n_out=4, axis=2)
    dx, dy, dw, dh = b.op("Split", [deltas, split], n_out=4, axis=2)
    half = b.const(0.5, np.float32, "half")
    one = b.const(1.0, np.float32, "one") if coder.plus_one else None

    def side(a1: str, a2: str, d_ctr: str, d_size: str, w_ctr: float, w_size: float) -> tuple[str, str]:
        size = b.op("Sub", [a2, a1])
        if one:
            size = b.op("Add", [size, one])
        ctr = b.op("Add", [a1, b.op("Mul", [half, size])])
        if w_ctr != 1.0:  # dividing by 1 is exact; leave the node out
            d_ctr = b.op("Div", [d_ctr, b.const(w_ctr, np.float32, "weight")])
        if w_size != 1.0:
            d_size = b.op("Div", [d_size, b.const(w_size, np.float32, "weight")])
        if coder.scale_clamp is not None:
            d_size = b.op("Min", [d_size, b.const(coder.scale_clamp, np.float32, "scale_clamp")])
        pred_ctr = b.op("Add", [b.op("Mul", [d_ctr, size]), ctr])
        half_size = b.op("Mul", [half, b.op("Mul", [b.op("Exp", [d_size]), size])])
        lo = b.op("Sub", [pred_ctr, half_size])
        hi = b.op("Add", [pred_ctr, half_size])
        if one:
            hi = b.op("Sub", [hi, one])
        return lo, hi

    wx, wy, ww, wh = (float(w) for w in coder.weights)
    x1, x2 = side(ax1, ax2, dx, dw, wx, ww)
    y1, y2 = side(ay1, ay2, dy, dh, wy, wh)
    return b.op("Concat", [x1, y1, x2, y2], axis=2)


def _clip_in_graph(b: GraphBuilder, spec: ModelSpec, boxes: str, shapes: _Shapes) -> str:
    """Clip before NMS where the graph can: it knows the padded input size, not the resized or
    original image size (see convention_report)."""
    mode = spec.postprocess.clip
    if mode in ("original", "none"):
        return boxes  # detectron2 clips after NMS, in original pixels: detections_from_end2end does it
    h, w = _input_hw_tensors(b, shapes)
    if mode in ("resized_minus1", "original_minus1"):
        one = b.const([1.0], np.float32, "one")
        h, w = b.op("Sub", [h, one]), b.op("Sub", [w, one])
    upper = b.op("Concat", [w, h, w, h], axis=0)
    if mode == "padded_lower":  # yhenon: x1, y1 from below, x2, y2 from above only
        lower = b.const([0.0, 0.0, -np.inf, -np.inf], np.float32, "lower")
        inf = b.const([np.inf, np.inf], np.float32, "inf")
        upper = b.op("Concat", [inf, w, h], axis=0)
    else:
        lower = b.const([0.0, 0.0, 0.0, 0.0], np.float32, "lower")
    return b.op("Min", [b.op("Max", [boxes, lower]), upper])


def build_candidates(b: GraphBuilder, spec: ModelSpec, cls: list[str], box: list[str], shapes: _Shapes,
                     anchors_mode: str) -> Candidates:
    """Every level's candidates, concatenated: scored, decoded and clipped (see Candidates)."""
    parts = []
    for i, lv in enumerate(spec.levels):
        with b.scope(f"p{lv}"):
            parts.append(_level_candidates(b, spec, i, cls[i], box[i], shapes, anchors_mode))
    with b.scope("decode"):
        values, valid, classes, deltas, anchors = (
            b.op("Concat", [p[j] for p in parts], axis=1) for j in range(5)
        )
        scores = b.op("Where", [valid, _sigmoid(b, values), b.const(-1.0, np.float32, "invalid")])
        boxes = _clip_in_graph(b, spec, _decode(b, spec, deltas, anchors), shapes)
    ks = [p[5] for p in parts]
    m_static = sum(ks) if all(k is not None for k in ks) else None  # type: ignore[misc]
    return Candidates(boxes=boxes, scores=scores, classes=classes, m_static=m_static)


def nms_boxes(b: GraphBuilder, spec: ModelSpec, boxes: str) -> str:
    """The boxes NMS compares: +1 on x2, y2 gives the legacy +1 widths and areas exactly in real
    arithmetic (IoU of [x1, x2 + 1] without +1 = IoU of [x1, x2] with +1)."""
    if not spec.postprocess.nms_plus_one:
        return boxes
    return b.op("Add", [boxes, b.const([0.0, 0.0, 1.0, 1.0], np.float32, "plus_one")])


