"""The EfficientNMS_TRT variant: TensorRT-only, so its structure is what is checked here."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from retinanet_trt.plugins.efficientnms import PLUGIN_OP, efficientnms_attributes, plugin_nodes
from retinanet_trt.plugins.end2end import OUTPUTS, add_end2end, postprocess_model
from retinanet_trt.spec.metadata import read_info
from retinanet_trt.spec.presets import get_preset

FEATURES = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]


def _defined_before_use(model: onnx.ModelProto) -> None:
    """Every node input exists (graph input, initializer or an earlier node's output)."""
    known = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    for node in model.graph.node:
        missing = [i for i in node.input if i not in known]
        assert not missing, f"{node.name} reads undefined {missing}"
        known.update(node.output)
    assert {o.name for o in model.graph.output} <= known


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_plugin_node_inputs_outputs_and_attributes() -> None:
    spec = get_preset("tiny")
    model = postprocess_model(spec, (128, 160), FEATURES, batch=2, nms="efficientnms")
    _defined_before_use(model)
    (node,) = plugin_nodes(model)
    assert node.name == f"post/nms/{PLUGIN_OP}" and node.domain == ""
    assert list(node.output[1:]) == ["boxes", "scores", "labels"]
    attrs = _attrs(node)
    assert attrs["max_output_boxes"] == 100 and attrs["background_class"] == -1
    assert attrs["score_activation"] == 0 and attrs["class_agnostic"] == 0 and attrs["box_coding"] == 0
    assert attrs["plugin_version"] == b"1"
    # IoU >= thr in the plugin reproduces the spec's IoU > 0.5: thr is the next float32 above 0.5.
    assert attrs["iou_threshold"] == pytest.approx(float(np.nextafter(np.float32(0.5), np.float32(1))), abs=0)
    assert 0.007 <= attrs["score_threshold"] < 0.05  # the fast filter kernel, below every valid score
    assert [o.name for o in model.graph.output] == list(OUTPUTS)
    assert not any(n.op_type == "NonMaxSuppression" for n in model.graph.node)
    dims = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert dims == {"num_dets": [2], "boxes": [2, 100, 4], "scores": [2, 100], "labels": [2, 100]}


def test_ge_rule_and_plus_one_boxes() -> None:
    spec = get_preset("r50_fpn1024_1class")  # maskrcnn-benchmark: IoU >= 0.4 with +1 areas
    attrs = efficientnms_attributes(spec)
    assert attrs["iou_threshold"] == pytest.approx(float(np.float32(0.4)), abs=0)
    model = postprocess_model(spec, (480, 640), [(60, 80), (30, 40), (15, 20), (8, 10), (4, 5)], nms="efficientnms")
    _defined_before_use(model)
    (node,) = plugin_nodes(model)
    # The plugin compares boxes with x2 + 1, y2 + 1; the graph subtracts the 1 from what it returns.
    assert "boxes" not in node.output
    assert any(n.output[0] == "boxes" and n.op_type == "Where" for n in model.graph.node)


def test_added_to_an_export_records_the_variant(tiny_onnx) -> None:  # type: ignore[no-untyped-def]
    path, _ = tiny_onnx
    model, report = add_end2end(onnx.load(path), nms="efficientnms")
    _defined_before_use(model)
    assert len(plugin_nodes(model)) == 1
    info = read_info(model)
    assert info["end2end"] is True and info["nms"] == "efficientnms"
    assert "nms_boxes" in info["end2end_deviations"]
    assert report["nms"] == "efficientnms"
