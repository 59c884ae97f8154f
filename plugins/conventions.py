"""Which framework conventions the in-graph post-process reproduces exactly, and which not (docs/end2end.md)."""

from __future__ import annotations

from typing import Any

from retinanet_trt.plugins.candidates import TRT_TOPK_MAX_K, max_detections
from retinanet_trt.plugins.thresholds import FLOAT_EXACT_INT, logit_threshold, nms_iou_threshold
from retinanet_trt.spec import ModelSpec

TRT_NMS_MAX_BOXES = 5000  # INMSLayer's default TopK box limit


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


