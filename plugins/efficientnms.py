"""The end-to-end graph with an EfficientNMS_TRT plugin node in place of NonMaxSuppression.

Everything before NMS (threshold, top-k, decode, clip) is the standard-ONNX graph of end2end.py;
the plugin then takes boxes (N, M, 4) and per-class scores (N, M, K) and returns the padded
detections itself. TensorRT ships the plugin (deprecated since 10.12, still in 11.x) and loads it
with `init_libnvinfer_plugins`; ONNX Runtime has no kernel for it, so this graph is checked for
structure only. Its semantics, read from the plugin source: score >= score_threshold, IoU >=
iou_threshold, the 4096 best candidates go into NMS, and ties are sorted in no fixed order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from retinanet_trt.plugins.candidates import Candidates, max_detections, nms_boxes
from retinanet_trt.plugins.graph import GraphBuilder
from retinanet_trt.plugins.thresholds import nms_iou_threshold
from retinanet_trt.spec import ModelSpec

PLUGIN_OP = "EfficientNMS_TRT"
PLUGIN_VERSION = "1"
# Below this score threshold the plugin switches to a dense kernel that sorts every score.
DENSE_KERNEL_BELOW = 0.007


def efficientnms_attributes(spec: ModelSpec) -> dict[str, Any]:
    """The plugin's attributes for a spec.

    score_threshold only has to drop the -1 that marks invalid candidates (validity is decided
    exactly on logits before), so it sits just under the lowest level threshold: a few ulps of
    in-graph sigmoid error cannot drop a valid candidate, and a threshold >= 0.007 keeps the
    plugin's fast filtering kernel."""
    post = spec.postprocess
    lowest = min(post.score_thresh)
    return {
        "score_threshold": float(np.float32(max(lowest, 0.0) * (1.0 - 2.0**-20))),
        "iou_threshold": float(nms_iou_threshold(post.nms_iou, post.nms_rule, "ge")),
        "max_output_boxes": max_detections(spec),
        "background_class": -1,
        "score_activation": 0,  # scores are already sigmoid outputs
        "class_agnostic": 0,
        "box_coding": 0,  # x1y1x2y2 corners
        "plugin_version": PLUGIN_VERSION,
    }


def efficientnms_outputs(b: GraphBuilder, spec: ModelSpec, cand: Candidates) -> None:
    """Add the plugin node and the four graph outputs (num_dets, boxes, scores, labels)."""
    num_k = spec.head.num_classes
    d = max_detections(spec)
    with b.scope("nms"):
        own_class = b.op("Equal", [b.unsqueeze(cand.classes, [2]),
                                   b.const(np.arange(num_k, dtype=np.int64).reshape(1, 1, num_k), np.int64, "classes")])
        class_scores = b.op("Where", [own_class, b.unsqueeze(cand.scores, [2]), b.const(-1.0, np.float32, "invalid")])
        boxes = nms_boxes(b, spec, cand.boxes)
        shifted = boxes != cand.boxes
        names = ["post/nms/num_detections", "post/nms/detection_boxes" if shifted else "boxes", "scores", "labels"]
        b.op(PLUGIN_OP, [boxes, class_scores], outputs=names, **efficientnms_attributes(spec))
    with b.scope("outputs"):
        b.op("Reshape", [names[0], b.const([-1], np.int64, "shape")], outputs=["num_dets"])
        if shifted:
            # The plugin returns the boxes it compared: undo the +1, keep the padding rows zero.
            rows = b.const(np.arange(d, dtype=np.int32).reshape(1, d), np.int32, "rows")
            ok = b.unsqueeze(b.op("Less", [rows, names[0]]), [2])
            unshifted = b.op("Sub", [names[1], b.const([0.0, 0.0, 1.0, 1.0], np.float32, "plus_one")])
            b.op("Where", [ok, unshifted, b.const(0.0, np.float32, "zero")], outputs=["boxes"])


def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The EfficientNMS_TRT nodes of a model (for checks and reports)."""
    return [n for n in model.graph.node if n.op_type == PLUGIN_OP]


