"""In-graph post-process: threshold, top-k, decode and NMS appended to an exported RetinaNet.

The exported model ends in raw per-level maps cls_p{l} (N, A*K, H_l, W_l) and box_p{l}
(N, A*4, H_l, W_l). `add_end2end` replaces those outputs with

    num_dets (N,) int32, boxes (N, D, 4) float32, scores (N, D) float32, labels (N, D) int32

(D = max detections; rows past num_dets are zeros; boxes x1y1x2y2 in network-input pixels,
labels are class channels) built from standard ONNX ops, so the same file runs in ONNX Runtime
and TensorRT (NonMaxSuppression becomes TensorRT's INMSLayer). `detections_from_end2end` maps
those outputs back to original pixels and label ids, as runtime.postprocess does for raw maps.

It follows runtime.postprocess step by step, per level: the score threshold is a comparison of
logits against the exact float32 bound of the reference sigmoid; TopK on the logits; candidates
put in the frameworks' flat (location, anchor, class) order so score ties resolve as in the
reference; deltas and anchors gathered for the k candidates only (never a transpose of the whole
map); then the levels concatenated, sigmoid and decode on those candidates, per-class NMS, and
the max-detection cut. What standard ONNX cannot express exactly is listed by
`convention_report` (docs/end2end.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from retinanet_trt.errors import UsageError
from retinanet_trt.export.metadata import load_onnx, read_info, read_spec, set_metadata
from retinanet_trt.fileio import check_writable, write_bytes_atomic
from retinanet_trt.runtime.anchors import cell_anchors, grid_anchors
from retinanet_trt.plugins.graph import FLOAT, INT32, GraphBuilder
from retinanet_trt.runtime.postprocess import _clip, _to_original, sigmoid
from retinanet_trt.runtime.types import Detections, ImageMeta
from retinanet_trt.spec import ModelSpec

NMS_KINDS = ("onnx", "efficientnms")
ANCHOR_MODES = ("auto", "constant", "computed")
OUTPUTS = ("num_dets", "boxes", "scores", "labels")
MIN_OPSET = 13  # Unsqueeze/ReduceSum/Split take axes and sizes as inputs from 13 on
TRT_TOPK_MAX_K = 3840  # TensorRT's TopK limit (NvInfer.h, facts/tensorrt.md §4)
TRT_NMS_MAX_BOXES = 5000  # INMSLayer's default TopK box limit
FLOAT_EXACT_INT = 2**24  # integers up to here are exact in float32 (the flat-order sort key)


# ---------------------------------------------------------------------------------------- thresholds
def _order_key(x: float) -> int:
    """float32 -> int with the same order (negative floats have their magnitude bits reversed)."""
    bits = int(np.array(x, dtype=np.float32).view(np.int32))
    return bits if bits >= 0 else -(bits & 0x7FFFFFFF)


def _from_order_key(key: int) -> np.float32:
    bits = key if key >= 0 else (-key) | 0x80000000
    return np.array(bits, dtype=np.uint32).view(np.float32)[()]


def logit_threshold(thresh: float) -> np.float32:
    """The largest float32 logit x whose reference score sigmoid(x) is <= thresh.

    `logit > logit_threshold(t)` selects exactly the logits whose score passes `score > t` in
    runtime.postprocess (float64 sigmoid rounded to float32): a bisection over float32 values,
    so the in-graph threshold needs no sigmoid over the whole map and never disagrees at the
    boundary. +inf when nothing can pass (t >= 1), -inf when everything does (t < 0).
    """

    def passes(x: np.float32) -> bool:
        with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x < -709: sigmoid 0, as it should be
            return bool(sigmoid(np.array([x], dtype=np.float32))[0] > np.float32(thresh))

    lo, hi = _order_key(-np.inf), _order_key(np.inf)
    if passes(_from_order_key(lo)):
        return np.float32(-np.inf)
    if not passes(_from_order_key(hi)):
        return np.float32(np.inf)
    while hi - lo > 1:  # invariant: lo fails, hi passes
        mid = (lo + hi) // 2
        if passes(_from_order_key(mid)):
            hi = mid
        else:
            lo = mid
    return _from_order_key(lo)


def _round_down_f32(t: float) -> np.float32:
    f = np.float32(t)
    return np.nextafter(f, np.float32(-np.inf)) if float(f) > t else f


def _round_up_f32(t: float) -> np.float32:
    f = np.float32(t)
    return np.nextafter(f, np.float32(np.inf)) if float(f) < t else f


def nms_iou_threshold(t: float, rule: str, op_suppresses: str) -> np.float32:
    """The float32 IoU threshold with which an NMS that suppresses on `IoU <op> thr` reproduces
    the reference rule (float32 IoU against the float64 t, runtime.postprocess._suppresses).

    op_suppresses: "gt" for ONNX NonMaxSuppression (IoU > thr, as ONNX Runtime does it),
    "ge" for EfficientNMS_TRT (IoU >= thr). rule: the spec's "gt" (IoU > t) or "ge" (IoU >= t).
    For float32 IoU: IoU > t <=> IoU > round_down(t); IoU >= t <=> IoU >= round_up(t).
    """
    if rule == "gt":
        bound = _round_down_f32(t)
        return bound if op_suppresses == "gt" else np.nextafter(bound, np.float32(np.inf))
    bound = _round_up_f32(t)
    return np.nextafter(bound, np.float32(-np.inf)) if op_suppresses == "gt" else bound


# ---------------------------------------------------------------------------------------- the graph
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


def _nms_boxes(b: GraphBuilder, spec: ModelSpec, boxes: str) -> str:
    """The boxes NMS compares: +1 on x2, y2 gives the legacy +1 widths and areas exactly in real
    arithmetic (IoU of [x1, x2 + 1] without +1 = IoU of [x1, x2] with +1)."""
    if not spec.postprocess.nms_plus_one:
        return boxes
    return b.op("Add", [boxes, b.const([0.0, 0.0, 1.0, 1.0], np.float32, "plus_one")])


def _onnx_nms_outputs(b: GraphBuilder, spec: ModelSpec, cand: Candidates) -> None:
    """Per-class NonMaxSuppression, then the top D kept boxes by score: the four graph outputs."""
    post = spec.postprocess
    num_k = spec.head.num_classes
    d = max_detections(spec)
    with b.scope("nms"):
        invalid = b.const(-1.0, np.float32, "invalid")
        # Scores per class (N, K, M): each candidate scores only in its own class, -1 elsewhere,
        # and the NMS score threshold -0.5 drops those; the per-class cap D is exact because
        # the top D overall contain at most D of any class.
        own_class = b.op("Equal", [b.unsqueeze(cand.classes, [1]),
                                   b.const(np.arange(num_k, dtype=np.int64).reshape(1, num_k, 1), np.int64, "classes")])
        class_scores = b.op("Where", [own_class, b.unsqueeze(cand.scores, [1]), invalid])
        selected = b.op(
            "NonMaxSuppression",
            [_nms_boxes(b, spec, cand.boxes), class_scores, b.const([d], np.int64, "max_per_class"),
             b.const([nms_iou_threshold(post.nms_iou, post.nms_rule, "gt")], np.float32, "iou_threshold"),
             b.const([-0.5], np.float32, "score_threshold")],
            center_point_box=0,
        )  # (S, 3): batch, class, box
        batch_box = b.op("Gather", [selected, b.const([0, 2], np.int64, "batch_box")], axis=1)
        kept = b.op("GatherND", [cand.scores, batch_box])
        dense = b.op("ScatterND", [b.op("ConstantOfShape", [b.op("Shape", [cand.scores])],
                                        value=helper.make_tensor("v", FLOAT, [1], [-1.0])), batch_box, kept])
        if cand.m_static is not None and cand.m_static >= d:
            top_scores, top_index = b.op("TopK", [dense, b.const([d], np.int64, "d")], n_out=2, axis=1)
        else:
            # Fewer candidates than D (tiny inputs): pad with -1 columns so TopK can take D,
            # and point the padding rows at box 0 (they are zeroed below).
            n_d = b.op("Concat", [b.shape_dim(dense, 0), b.const([d], np.int64, "d")], axis=0)
            pad = b.op("ConstantOfShape", [n_d], value=helper.make_tensor("v", FLOAT, [1], [-1.0]))
            top_scores, top_index = b.op("TopK", [b.op("Concat", [dense, pad], axis=1), b.const([d], np.int64, "d")],
                                         n_out=2, axis=1)
            last = b.op("Sub", [b.shape_dim(dense, 1), b.const([1], np.int64, "one")])
            top_index = b.op("Min", [top_index, last])
    _write_outputs(b, cand, top_scores, top_index)


def _write_outputs(b: GraphBuilder, cand: Candidates, top_scores: str, top_index: str) -> None:
    """num_dets, boxes, scores, labels from the top D (score, candidate index) pairs; -1 scores are padding."""
    with b.scope("outputs"):
        zero = b.const(0.0, np.float32, "zero")
        ok = b.op("Greater", [top_scores, b.const(-0.5, np.float32, "padding")])
        # ReduceSum over float: TensorRT reduces floats only; counts stay exact far beyond D.
        count = b.op("ReduceSum", [b.cast(ok, FLOAT), b.const([1], np.int64, "axis")], keepdims=0)
        b.op("Cast", [count], outputs=["num_dets"], to=INT32)
        b.op("Where", [ok, top_scores, zero], outputs=["scores"])
        picked = b.op("GatherND", [cand.boxes, b.unsqueeze(top_index, [2])], batch_dims=1)
        b.op("Where", [b.unsqueeze(ok, [2]), picked, zero], outputs=["boxes"])
        labels = b.op("GatherElements", [cand.classes, top_index], axis=1)
        labels = b.op("Where", [ok, labels, b.const(0, np.int64, "zero_label")])
        b.op("Cast", [labels], outputs=["labels"], to=INT32)


def _set_outputs(graph: onnx.GraphProto, batch: int | str | None, d: int) -> None:
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info("num_dets", INT32, [batch]),
        helper.make_tensor_value_info("boxes", FLOAT, [batch, d, 4]),
        helper.make_tensor_value_info("scores", FLOAT, [batch, d]),
        helper.make_tensor_value_info("labels", INT32, [batch, d]),
    ])


def _static_dim(dim: onnx.TensorShapeProto.Dimension) -> int | None:
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None


def _batch_dim(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    return _static_dim(dim) or (dim.dim_param or None)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def add_end2end(model: onnx.ModelProto, spec: ModelSpec | None = None, nms: str = "onnx",
                anchors: str = "auto") -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Append the post-process to an exported model (a copy); return it and its report.

    spec: defaults to the one in the model's metadata (pass one to change thresholds, say).
    nms: "onnx" (NonMaxSuppression; runs in ONNX Runtime, INMSLayer in TensorRT) or
    "efficientnms" (an EfficientNMS_TRT plugin node; TensorRT only).
    anchors: "constant" (a table from runtime.anchors, needs a fixed input size), "computed"
    (from the cell anchors and the grid position in-graph: any input size), "auto" (constant
    when the input size is fixed).
    """
    if nms not in NMS_KINDS:
        raise UsageError(f"--nms {nms}: choose one of {', '.join(NMS_KINDS)}")
    if anchors not in ANCHOR_MODES:
        raise UsageError(f"anchors={anchors!r}: choose one of {', '.join(ANCHOR_MODES)}")
    spec = spec or read_spec(model)
    post = spec.postprocess
    if post.score_thresh_on == "logit" or post.max_per_class is not None or post.clip == "resized_to_original":
        raise UsageError("the end-to-end graph thresholds sigmoid scores and caps detections overall; this spec's "
                         "logit scores, per-class cap or NMS in original pixels (MindSpore) run in the NumPy "
                         "post-process: export without --end2end")
    info = read_info(model)
    if info.get("end2end") or any(o.name == "num_dets" for o in model.graph.output):
        raise UsageError("the model already ends in an end-to-end post-process; start from the plain export")
    if _opset(model) < MIN_OPSET:
        raise UsageError(f"the model has opset {_opset(model)}; the end-to-end post-process needs >= {MIN_OPSET} "
                         f"(re-export with --opset 17)")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    cls = [f"cls_p{lv}" for lv in spec.levels]
    box = [f"box_p{lv}" for lv in spec.levels]
    missing = [n for n in cls + box if n not in outputs]
    if missing or len(graph.input) != 1:
        raise UsageError(f"not a plain trt-export model: missing outputs {missing}" if missing else
                         f"expected one image input, found {len(graph.input)}")
    image = graph.input[0]
    in_dims = image.type.tensor_type.shape.dim
    input_hw = (_static_dim(in_dims[2]), _static_dim(in_dims[3]))
    feature_hws = [tuple(_static_dim(d) for d in outputs[n].type.tensor_type.shape.dim[2:]) for n in cls]
    static = None not in input_hw and all(None not in hw for hw in feature_hws)
    if anchors == "constant" and not static:
        raise UsageError("anchors='constant' needs a fixed input size; this model is dynamic (use 'computed')")
    mode = anchors if anchors != "auto" else ("constant" if static else "computed")
    shapes = _Shapes(input_hw=input_hw if static else None,  # type: ignore[arg-type]
                     feature_hws=feature_hws if static else None, image=image.name)  # type: ignore[arg-type]

    b = GraphBuilder(graph)
    cand = build_candidates(b, spec, cls, box, shapes, mode)
    if nms == "onnx":
        _onnx_nms_outputs(b, spec, cand)
    else:
        from retinanet_trt.plugins.efficientnms import efficientnms_outputs

        efficientnms_outputs(b, spec, cand)
    d = max_detections(spec)
    _set_outputs(graph, _batch_dim(in_dims[0]), d)
    report = convention_report(spec, nms, mode, shapes.feature_hws)
    set_metadata(model, spec, {**info, "end2end": True, "nms": nms, "end2end_anchors": mode, "max_detections": d,
                               "end2end_deviations": [c["name"] for c in report["conventions"] if not c["exact"]]})
    if nms == "onnx":
        onnx.checker.check_model(model, full_check=True)
    return model, report


def postprocess_model(spec: ModelSpec, input_hw: tuple[int, int], feature_hws: list[tuple[int, int]], batch: int = 1,
                      nms: str = "onnx", opset: int = 17, anchors: str = "constant") -> onnx.ModelProto:
    """The post-process alone: inputs cls_p{l}, box_p{l}, outputs the four end-to-end tensors.

    For timing the in-graph post-process apart from the network (benchmarks/postprocess_ingraph.py)
    and for testing it on chosen head outputs. anchors="constant": fixed sizes as given;
    "computed": every size dynamic, plus an input `images` (N, 3, H, W) read only for its shape,
    as in a dynamic export."""
    if anchors not in ("constant", "computed"):
        raise UsageError(f"anchors={anchors!r}: choose 'constant' or 'computed'")
    num_a, num_k = spec.head.num_anchors, spec.head.num_classes
    fixed = anchors == "constant"

    def dims(lv: int, hw: tuple[int, int]) -> list[int | str]:
        return list(hw) if fixed else [f"p{lv}_height", f"p{lv}_width"]

    n: int | str = batch if fixed else "batch"
    inputs = [helper.make_tensor_value_info(f"cls_p{lv}", FLOAT, [n, num_a * num_k, *dims(lv, hw)])
              for lv, hw in zip(spec.levels, feature_hws, strict=True)]
    inputs += [helper.make_tensor_value_info(f"box_p{lv}", FLOAT, [n, num_a * 4, *dims(lv, hw)])
               for lv, hw in zip(spec.levels, feature_hws, strict=True)]
    if not fixed:
        inputs.append(helper.make_tensor_value_info("images", FLOAT, [n, 3, "height", "width"]))
    graph = helper.make_graph([], "retinanet_postprocess", inputs, [])
    b = GraphBuilder(graph)
    shapes = _Shapes(input_hw=input_hw, feature_hws=list(feature_hws), image=None) if fixed else \
        _Shapes(input_hw=None, feature_hws=None, image="images")
    cand = build_candidates(b, spec, [f"cls_p{lv}" for lv in spec.levels], [f"box_p{lv}" for lv in spec.levels],
                            shapes, anchors)
    if nms == "onnx":
        _onnx_nms_outputs(b, spec, cand)
    else:
        from retinanet_trt.plugins.efficientnms import efficientnms_outputs

        efficientnms_outputs(b, spec, cand)
    _set_outputs(graph, n, max_detections(spec))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="retinanet_trt")
    set_metadata(model, spec, {"end2end": True, "nms": nms, "end2end_anchors": anchors, "postprocess_only": True})
    return model


# ---------------------------------------------------------------------------------------- runner side
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


def is_end2end(outputs: dict[str, np.ndarray]) -> bool:
    """Whether backend outputs come from an end-to-end model (else: raw maps for runtime.postprocess)."""
    return "num_dets" in outputs


# ---------------------------------------------------------------------------------------- conventions
def convention_report(spec: ModelSpec, nms: str, anchors_mode: str,
                      feature_hws: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Which reference conventions the graph reproduces exactly, and what it does where it cannot.

    feature_hws: the level sizes when fixed (None: dynamic), for the limits that depend on them.

    Returns {"nms", "anchors", "max_detections", "conventions": [{"name", "reference", "graph",
    "exact", "note"}]}."""
    post, coder = spec.postprocess, spec.box_coder
    rows: list[dict[str, Any]] = []

    def row(name: str, reference: str, graph: str, exact: bool, note: str = "") -> None:
        rows.append({"name": name, "reference": reference, "graph": graph, "exact": exact, "note": note})

    bounds = [float(logit_threshold(t)) for t in post.score_thresh]
    row("score_threshold", f"score > {post.score_thresh} per level",
        f"logit > {bounds} (float32 bounds of the reference sigmoid)", True)
    row("sigmoid", "float64, rounded to float32", "float32 r = e/(1+e)", False,
        "within 2 ulps: output scores differ by <= 2.4e-7, and two candidates whose reference scores are "
        "within 2 ulps may swap NMS priority")
    k = post.topk_per_level
    row("topk_per_level", f"top {k} by score, ties to the earlier flat index", f"TopK {k} on logits", False,
        "differs only where several candidates share the k-th float32 score with different logits")
    if k is None or k > TRT_TOPK_MAX_K:
        row("topk_limit", f"k = {k}", f"TopK k = {k}", False, f"TensorRT's TopK takes k <= {TRT_TOPK_MAX_K}")
    largest = None
    if feature_hws is not None:
        largest = max(h * w for h, w in feature_hws) * spec.head.num_anchors * spec.head.num_classes
    row("tie_order", "(level, location, anchor, class)", "float32 sort key of the flat index",
        largest is not None and largest < FLOAT_EXACT_INT,
        f"exact while a level has < 2^24 (anchor, class) entries; largest here: {largest or 'dynamic'}")
    row("anchors", spec.anchors.generator, anchors_mode,
        anchors_mode == "constant" or spec.anchors.generator != "yhenon",
        "yhenon sums cell and shift in float64; the computed anchors sum in float32 (<= 1 ulp)"
        if anchors_mode == "computed" and spec.anchors.generator == "yhenon" else "")
    row("box_decode", f"weights {coder.weights}, clamp {coder.scale_clamp}, plus_one {coder.plus_one}",
        "same operations in the same order, float32", False, "Exp may differ by 1 ulp (boxes within ~1e-4 px)")
    clip_exact = post.clip in ("original", "none", "padded_lower")
    clip_notes = {
        "resized": "clips to the padded input before NMS and to the resized image after it; NMS sees different "
                   "coordinates for boxes that cross the resized border inside the padding",
        "resized_minus1": "as 'resized', with the -1 bounds",
        "original_minus1": "Detectron rescales and clips before NMS and runs NMS in original pixels; the graph "
                           "runs NMS in input pixels after clipping to the padded input - 1",
    }
    row("clip", post.clip, "after NMS, by detections_from_end2end" if post.clip in ("original", "original_minus1")
        else "in-graph before NMS", clip_exact, clip_notes.get(post.clip, ""))
    op = "ge" if nms == "efficientnms" else "gt"
    row("nms_rule", f"IoU {'>' if post.nms_rule == 'gt' else '>='} {post.nms_iou}",
        f"IoU {'>' if op == 'gt' else '>='} {float(nms_iou_threshold(post.nms_iou, post.nms_rule, op))!r}",
        nms == "onnx", "exact for float32 IoU in ONNX Runtime; TensorRT's INMSLayer comparison is not documented"
        if nms == "onnx" else "EfficientNMS_TRT sorts the candidates after a parallel filter: ties in any order")
    if post.nms_plus_one:
        row("nms_plus_one", "+1 widths and areas", "x2 + 1, y2 + 1 before NMS", False,
            "the same in real arithmetic; float32 rounds (x2 + 1) - x1 and x2 - x1 + 1 differently")
    d = max_detections(spec)
    row("max_detections", str(post.max_detections), f"per-class cap {d}, then top {d}", True)
    if nms == "onnx":
        row("nms_boxes", "all candidates", f"{len(spec.levels)} levels x k candidates into INMSLayer", True,
            f"TensorRT's INMSLayer takes at most {TRT_NMS_MAX_BOXES} boxes per class by default")
    else:
        from retinanet_trt.plugins.efficientnms import DENSE_KERNEL_BELOW, efficientnms_attributes

        row("nms_boxes", "all candidates", "EfficientNMS_TRT processes the 4096 best", False,
            "candidates past the 4096th best score are dropped before NMS")
        threshold = efficientnms_attributes(spec)["score_threshold"]
        if threshold < DENSE_KERNEL_BELOW:
            row("plugin_speed", f"score_threshold {threshold}", "dense kernel", True,
                f"EfficientNMS_TRT sorts every score when score_threshold < {DENSE_KERNEL_BELOW} (slower)")
    row("rescale", post.rescale, "detections_from_end2end", True)
    row("drop_empty", str(post.drop_empty), "detections_from_end2end", True)
    return {"nms": nms, "anchors": anchors_mode, "max_detections": d, "conventions": rows}


# ---------------------------------------------------------------------------------------- files and checks
def end2end_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], nms: str = "onnx",
                 anchors: str = "auto", check_seed: int = 0) -> dict[str, Any]:
    """Read a plain export, append the post-process, check it (nms='onnx': against runtime.postprocess
    on the plain model in ONNX Runtime, on a random input) and write it to dst atomically."""
    check_writable(dst)
    if not os.path.isfile(src):
        raise UsageError(f"ONNX file {os.fspath(src)} not found; export one with trt-export")
    plain = load_onnx(src)
    model, report = add_end2end(plain, nms=nms, anchors=anchors)
    if nms == "onnx":
        report["check"] = check_against_reference(plain, model, seed=check_seed)
        if not report["check"]["passed"]:
            raise UsageError(f"the end-to-end model disagrees with the NumPy post-process: {report['check']}; "
                             f"{os.fspath(dst)} not changed")
    else:
        report["check"] = {"passed": None, "note": "EfficientNMS_TRT runs only in TensorRT; structure checked"}
    write_bytes_atomic(dst, model.SerializeToString())
    report["output"] = os.fspath(dst)
    return report


def check_against_reference(plain: onnx.ModelProto, end2end: onnx.ModelProto, images: np.ndarray | None = None,
                            metas: list[ImageMeta] | None = None, seed: int = 0) -> dict[str, Any]:
    """Run both models in ONNX Runtime (CPU) and compare runtime.postprocess on the plain model's
    maps with detections_from_end2end: see compare_detections. Random images when none are given."""
    from retinanet_trt.runtime.backends.ort_backend import cpu_session
    from retinanet_trt.runtime.postprocess import postprocess

    spec = read_spec(end2end)
    if images is None:
        info = read_info(plain)
        h, w = info.get("input_hw") or (256, 320)
        images = np.random.default_rng(seed).standard_normal((int(info.get("batch", 1)), 3, h, w)).astype(np.float32)
    if metas is None:
        hw = (int(images.shape[2]), int(images.shape[3]))
        metas = [ImageMeta(original_hw=hw, resized_hw=hw, input_hw=hw) for _ in range(images.shape[0])]
    plain_session, e2e_session = cpu_session(plain), cpu_session(end2end)
    names = [o.name for o in plain_session.get_outputs()]
    raw = dict(zip(names, plain_session.run(names, {"images": images}), strict=True))
    e2e = dict(zip(OUTPUTS, e2e_session.run(list(OUTPUTS), {"images": images}), strict=True))
    return compare_detections(postprocess(raw, spec, metas), detections_from_end2end(e2e, spec, metas))


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


__all__ = [
    "OUTPUTS", "add_end2end", "check_against_reference", "compare_detections", "convention_report",
    "detections_from_end2end", "end2end_file", "is_end2end", "logit_threshold", "max_detections",
    "nms_iou_threshold", "postprocess_model",
]
