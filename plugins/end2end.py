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
from typing import Any

import numpy as np
import onnx
from onnx import helper

from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import check_writable, write_bytes_atomic
from retinanet_trt.plugins.candidates import (
    MIN_OPSET,
    Candidates,
    _Shapes,
    build_candidates,
    max_detections,
    nms_boxes,
)
from retinanet_trt.plugins.conventions import convention_report
from retinanet_trt.plugins.graph import FLOAT, INT32, GraphBuilder
from retinanet_trt.plugins.results import compare_detections, detections_from_end2end
from retinanet_trt.plugins.thresholds import nms_iou_threshold
from retinanet_trt.runtime.types import ImageMeta
from retinanet_trt.spec import ModelSpec
from retinanet_trt.spec.metadata import END2END_OUTPUTS, load_onnx, read_info, read_spec, set_metadata

NMS_KINDS = ("onnx", "efficientnms")
ANCHOR_MODES = ("auto", "constant", "computed")
OUTPUTS = END2END_OUTPUTS



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
            [nms_boxes(b, spec, cand.boxes), class_scores, b.const([d], np.int64, "max_per_class"),
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


__all__ = [  # the in-graph post-process's API, from its modules
    "OUTPUTS", "add_end2end", "check_against_reference", "compare_detections", "convention_report",
    "detections_from_end2end", "end2end_file", "max_detections", "postprocess_model",
]
