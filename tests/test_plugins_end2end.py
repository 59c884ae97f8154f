"""The in-graph post-process (plugins/end2end.py) against the NumPy post-process, in ONNX Runtime."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from retinanet_trt.demo import DEMO_CHECKPOINT, load_demo
from retinanet_trt.demo.synthetic import iter_samples
from retinanet_trt.errors import UsageError
from retinanet_trt.export.pipeline import ExportOptions, export_onnx
from retinanet_trt.model import build_model
from retinanet_trt.plugins.end2end import (
    OUTPUTS,
    add_end2end,
    check_against_reference,
    compare_detections,
    convention_report,
    detections_from_end2end,
    postprocess_model,
)
from retinanet_trt.plugins.thresholds import logit_threshold, nms_iou_threshold
from retinanet_trt.runtime.postprocess import postprocess, sigmoid
from retinanet_trt.runtime.preprocess import preprocess
from retinanet_trt.runtime.resize_plan import resized_hw
from retinanet_trt.runtime.types import ImageMeta
from retinanet_trt.spec import AnchorSpec, BoxCoderSpec, ModelSpec
from retinanet_trt.spec.metadata import read_info
from retinanet_trt.spec.presets import get_preset


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _head_outputs(spec: ModelSpec, n: int, input_hw: tuple[int, int], seed: int,
                  boost: tuple[float, float] = (3.0, 14.0)) -> dict[str, np.ndarray]:
    """Raw maps like a busy image's: background logits near -5 and object clusters that light up
    neighbouring cells and anchors of one class by `boost`; the default reaches saturated
    logits, whose float32 scores tie at ~1."""
    rng = np.random.default_rng(seed)
    a, k = spec.head.num_anchors, spec.head.num_classes
    out = {}
    for lv in spec.levels:
        h, w = math.ceil(input_hw[0] / 2**lv), math.ceil(input_hw[1] / 2**lv)
        cls = rng.normal(-5.0, 1.5, size=(n, a, k, h, w)).astype(np.float32)
        for i in range(n):
            for _ in range(6):
                c, y, x = rng.integers(k), rng.integers(h), rng.integers(w)
                cells = cls[i, :, c, max(0, y - 1): y + 2, max(0, x - 1): x + 2]
                cells += rng.uniform(*boost, size=cells.shape).astype(np.float32)
        out[f"cls_p{lv}"] = cls.reshape(n, a * k, h, w)
        out[f"box_p{lv}"] = rng.normal(0.0, 0.6, size=(n, a * 4, h, w)).astype(np.float32)
    return out


def _framework_specs() -> dict[str, ModelSpec]:
    """The tiny head with each framework's post-process conventions."""
    specs = {"detectron2": get_preset("tiny")}
    tv = get_preset("tiny")
    tv.anchors = AnchorSpec(sizes=[[int(s * 2 ** (i / 3)) for i in range(3)] for s in (16, 32, 64, 128, 256)],
                            order="ratio_major", generator="torchvision")
    tv.postprocess.clip, tv.postprocess.max_detections, tv.postprocess.drop_empty = "resized", 300, False
    specs["torchvision"] = tv
    legacy = get_preset("tiny")
    legacy.anchors.generator, legacy.anchors.order = "legacy", "ratio_major"
    legacy.box_coder = BoxCoderSpec(weights=[10.0, 10.0, 5.0, 5.0], plus_one=True)
    legacy.postprocess.nms_iou, legacy.postprocess.nms_rule, legacy.postprocess.nms_plus_one = 0.4, "ge", True
    legacy.postprocess.clip = "resized_minus1"
    specs["maskrcnn_benchmark"] = legacy
    detectron = get_preset("tiny")
    detectron.anchors.generator = "legacy"
    detectron.box_coder.plus_one = True
    detectron.postprocess.score_thresh = [0.05, 0.05, 0.05, 0.05, 0.0]
    detectron.postprocess.nms_rule, detectron.postprocess.nms_plus_one = "ge", True
    detectron.postprocess.clip = "original_minus1"
    specs["detectron"] = detectron
    yhenon = get_preset("tiny")
    yhenon.anchors.generator, yhenon.box_coder.scale_clamp = "yhenon", None
    yhenon.postprocess.clip, yhenon.postprocess.max_detections = "padded_lower", None
    yhenon.preprocess.rounding, yhenon.postprocess.rescale = "round", "uniform"
    specs["yhenon"] = yhenon
    return specs


@pytest.mark.parametrize("anchors", ["constant", "computed"])
@pytest.mark.parametrize("framework", list(_framework_specs()))
def test_graph_matches_numpy_postprocess_for_each_framework(framework: str, anchors: str) -> None:
    spec = _framework_specs()[framework]
    input_hw = (320, 320)
    outputs = _head_outputs(spec, 2, input_hw, seed=len(framework))
    feature_hws = [tuple(outputs[f"cls_p{lv}"].shape[2:]) for lv in spec.levels]
    if spec.postprocess.clip in ("original", "padded_lower"):  # exact: any image size
        originals = [(100, 150), (61, 47)]
        metas = [ImageMeta(original_hw=o, resized_hw=resized_hw(o, spec.preprocess), input_hw=input_hw) for o in originals]
        assert all(m.resized_hw[0] <= input_hw[0] and m.resized_hw[1] <= input_hw[1] for m in metas)
    else:
        # The clip modes the graph can only approximate (resized, original_minus1) agree exactly
        # when the image fills the input and original = resized.
        metas = [ImageMeta(original_hw=input_hw, resized_hw=input_hw, input_hw=input_hw)] * 2
    feed = dict(outputs)
    if anchors == "computed":
        feed["images"] = np.zeros((2, 3, *input_hw), dtype=np.float32)
    model = postprocess_model(spec, input_hw, feature_hws, batch=2, anchors=anchors)  # type: ignore[arg-type]
    e2e = dict(zip(OUTPUTS, _session(model).run(list(OUTPUTS), feed), strict=True))
    result = compare_detections(postprocess(outputs, spec, metas), detections_from_end2end(e2e, spec, metas))
    assert result["passed"], result
    assert result["detections"] > 20


@pytest.mark.parametrize("anchors", ["constant", "computed"])
def test_fewer_candidates_than_max_detections_are_padded(anchors: str) -> None:
    spec = get_preset("tiny")
    spec.postprocess.topk_per_level = 8  # 5 levels x 8 = 40 candidates for 100 output rows
    input_hw = (64, 96)
    # No saturated scores: the top-8 cut on logits would differ from the reference only where
    # the 8th score is tied (convention_report: topk_per_level).
    outputs = _head_outputs(spec, 1, input_hw, seed=3, boost=(2.0, 4.0))
    feature_hws = [tuple(outputs[f"cls_p{lv}"].shape[2:]) for lv in spec.levels]
    feed = dict(outputs, images=np.zeros((1, 3, *input_hw), dtype=np.float32)) if anchors == "computed" else outputs
    model = postprocess_model(spec, input_hw, feature_hws, anchors=anchors)  # type: ignore[arg-type]
    got = dict(zip(OUTPUTS, _session(model).run(list(OUTPUTS), feed), strict=True))
    n = int(got["num_dets"][0])
    assert got["num_dets"].dtype == np.int32 and got["labels"].dtype == np.int32
    assert got["boxes"].shape == (1, 100, 4) and got["scores"].shape == (1, 100)
    assert 0 < n <= 40
    meta = [ImageMeta(original_hw=input_hw, resized_hw=input_hw, input_hw=input_hw)]
    assert compare_detections(postprocess(outputs, spec, meta), detections_from_end2end(got, spec, meta))["passed"]
    assert np.all(got["scores"][0, n:] == 0) and np.all(got["boxes"][0, n:] == 0) and np.all(got["labels"][0, n:] == 0)
    assert np.all(np.diff(got["scores"][0, :n]) <= 0)


@pytest.mark.parametrize("thresh", [0.05, 0.3, 0.5, 0.9999, 1e-30, 0.0])
def test_logit_threshold_is_exact(thresh: float) -> None:
    bound = logit_threshold(thresh)
    x = np.array([np.nextafter(bound, np.float32(-np.inf)), bound, np.nextafter(bound, np.float32(np.inf))])
    x = np.concatenate([x, bound + np.random.default_rng(0).normal(0, 1e-3, 1000).astype(np.float32)])
    np.testing.assert_array_equal(x > bound, sigmoid(x.astype(np.float32)) > np.float32(thresh))
    assert logit_threshold(1.0) == np.inf


def test_nms_iou_thresholds_reproduce_both_rules() -> None:
    iou = np.float32(0.4)  # float32(0.4) > 0.4: suppresses under "gt" and "ge" alike
    below = np.nextafter(iou, np.float32(0))
    for rule, expect_at, expect_below in (("gt", True, False), ("ge", True, False)):
        t_gt = nms_iou_threshold(0.4, rule, "gt")
        t_ge = nms_iou_threshold(0.4, rule, "ge")
        assert (iou > t_gt) == expect_at and (below > t_gt) == expect_below
        assert (iou >= t_ge) == expect_at and (below >= t_ge) == expect_below
    half = np.float32(0.5)  # exactly representable: "gt" keeps IoU == 0.5, "ge" suppresses it
    assert not half > nms_iou_threshold(0.5, "gt", "gt") and half > nms_iou_threshold(0.5, "ge", "gt")
    assert not half >= nms_iou_threshold(0.5, "gt", "ge") and half >= nms_iou_threshold(0.5, "ge", "ge")


@pytest.fixture(scope="module")
def tiny_static(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A fixed-size (batch 1, 256x320) tiny model whose random head scores pass 0.05 often."""
    spec = get_preset("tiny")
    model = build_model(spec, seed=0)
    with torch.no_grad():
        model.head.cls_pred.bias += 1.5
    path = tmp_path_factory.mktemp("e2e") / "tiny_static.onnx"
    export_onnx(model, spec, path, ExportOptions(input_hw=(256, 320)))
    return onnx.load(path)


def test_end2end_on_a_fixed_size_export(tiny_static) -> None:  # type: ignore[no-untyped-def]
    model, report = add_end2end(tiny_static)
    assert [o.name for o in model.graph.output] == list(OUTPUTS)
    assert report["anchors"] == "constant"
    info = read_info(model)
    assert info["end2end"] is True and info["nms"] == "onnx" and info["input_hw"] == [256, 320]
    assert any(n.op_type == "NonMaxSuppression" for n in model.graph.node)
    assert all(n.name.startswith("post/") for n in model.graph.node if n.name not in {m.name for m in tiny_static.graph.node})
    images = np.random.default_rng(1).standard_normal((1, 3, 256, 320)).astype(np.float32)
    metas = [ImageMeta(original_hw=(360, 500), resized_hw=(230, 319), input_hw=(256, 320))]
    result = check_against_reference(tiny_static, model, images, metas)
    assert result["passed"] and result["detections"] == 100, result


def test_end2end_on_a_dynamic_export(tiny_onnx) -> None:  # type: ignore[no-untyped-def]
    path, spec = tiny_onnx
    plain = onnx.load(path)
    # The fixture's random head scores near the 0.01 prior; 0.012 lets thousands pass at P3 (the
    # top-k cut matters) and a few at P7.
    spec.postprocess.score_thresh = [0.012] * 5
    model, report = add_end2end(plain, spec=spec)
    assert report["anchors"] == "computed"
    for i, hw in enumerate([(128, 160), (96, 224), (192, 128)]):
        images = np.random.default_rng(i).standard_normal((2, 3, *hw)).astype(np.float32)
        metas = [ImageMeta(original_hw=hw, resized_hw=hw, input_hw=hw)] * 2
        result = check_against_reference(plain, model, images, metas)
        assert result["passed"] and result["detections"] > 0, (hw, result)


def test_add_end2end_refuses_what_it_cannot_do(tiny_static, tiny_onnx) -> None:  # type: ignore[no-untyped-def]
    model, _ = add_end2end(tiny_static)
    with pytest.raises(UsageError, match="already ends"):
        add_end2end(model)
    with pytest.raises(UsageError, match="--nms"):
        add_end2end(tiny_static, nms="batched")
    with pytest.raises(UsageError, match="fixed input size"):
        add_end2end(onnx.load(tiny_onnx[0]), anchors="constant")
    spec = get_preset("tiny")
    spec.postprocess.max_detections = spec.postprocess.topk_per_level = None
    with pytest.raises(UsageError, match="max_detections"):
        add_end2end(tiny_static, spec=spec)


def test_detections_from_end2end_maps_to_original_pixels_and_label_ids() -> None:
    spec = get_preset("tiny")
    outputs = {
        "num_dets": np.array([2], dtype=np.int32),
        "boxes": np.array([[[10, 20, 110, 220], [-5, 0, 300, 400], [0, 0, 0, 0]]], dtype=np.float32),
        "scores": np.array([[0.9, 0.5, 0.0]], dtype=np.float32),
        "labels": np.array([[3, 0, 0]], dtype=np.int32),
    }
    meta = ImageMeta(original_hw=(500, 400), resized_hw=(250, 200), input_hw=(256, 224))
    (det,) = detections_from_end2end(outputs, spec, [meta])
    np.testing.assert_allclose(det.boxes, [[20, 40, 220, 440], [0, 0, 400, 500]])  # x2, clipped to the original
    assert det.labels.tolist() == [4, 1] and det.names == ["star", "circle"]
    assert det.scores.tolist() == pytest.approx([0.9, 0.5])


FEATURES = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]


def test_convention_report_names_what_is_not_exact() -> None:
    specs = _framework_specs()
    inexact = {name: {c["name"] for c in convention_report(s, "onnx", "constant", FEATURES)["conventions"]
                      if not c["exact"]} for name, s in specs.items()}
    assert inexact["detectron2"] == {"sigmoid", "topk_per_level", "box_decode"}
    assert "clip" not in inexact["detectron2"] and "clip" in inexact["torchvision"]
    assert "clip" in inexact["detectron"] and "nms_plus_one" in inexact["detectron"]
    assert "nms_rule" not in inexact["maskrcnn_benchmark"]
    efficient = {c["name"] for c in convention_report(specs["detectron2"], "efficientnms", "constant")["conventions"]
                 if not c["exact"]}
    assert {"nms_rule", "nms_boxes"} <= efficient


@pytest.mark.skipif(not DEMO_CHECKPOINT.exists(), reason="the demo checkpoint is not in this checkout")
def test_demo_end_to_end_matches_on_synthetic_val_images(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec, model = load_demo()
    plain_path = tmp_path / "demo.onnx"
    export_onnx(model, spec, plain_path, ExportOptions(input_hw=(256, 320)))
    plain = onnx.load(plain_path)
    e2e, _ = add_end2end(plain)
    detections = 0
    for sample in iter_samples(4, seed=2024, split="val"):
        batch = preprocess([sample.image], spec, input_hw=(256, 320))
        result = check_against_reference(plain, e2e, batch.images, batch.metas)
        assert result["passed"], result
        detections += result["detections"]
    assert detections >= 8  # a trained model: the objects are found
