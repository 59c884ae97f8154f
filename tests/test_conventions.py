"""Resize rounding and box rescale of maskrcnn-benchmark, Detectron and yhenon, against values
worked out by hand from the facts sheet (facts/checkpoint-formats.md 3f, 4e-4f, 5e-5f)."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest

from retinanet_trt.errors import UsageError
from retinanet_trt.importers.common import Architecture
from retinanet_trt.importers.detectron import IMPORTER as DETECTRON
from retinanet_trt.importers.maskrcnn_benchmark import IMPORTER as MASKRCNN_BENCHMARK
from retinanet_trt.importers.yhenon import IMPORTER as YHENON
from retinanet_trt.runtime import postprocess as pp
from retinanet_trt.runtime.postprocess import postprocess
from retinanet_trt.runtime.preprocess import preprocess
from retinanet_trt.runtime.resize_plan import resize_scale, resized_hw
from retinanet_trt.runtime.types import ImageMeta
from retinanet_trt.spec import AnchorSpec, FPNSpec, HeadSpec, ModelSpec, PostprocessSpec, PreprocessSpec
from retinanet_trt.spec.presets import r50_fpn1024_1class


def _pre(rounding: str, min_size: int = 800, max_size: int = 1333) -> PreprocessSpec:
    return PreprocessSpec(min_size=min_size, max_size=max_size, rounding=rounding)


# ---------------------------------------------------------------------------------- sizes
@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((480, 640), (800, 1066)),  # 800 * 640 / 480 = 1066.67, truncated (round would give 1067)
        ((640, 480), (1066, 800)),
        ((427, 640), (800, 1199)),  # 800 * 640 / 427 = 1199.06
        ((1000, 1000), (800, 800)),
        ((801, 799), (802, 800)),  # width is the short side: 800 * 801 / 799 = 802.003
        # capped: 1500 / 500 * 800 = 2400 > 1333 -> size = int(round(1333 * 500 / 1500)) = int(round(444.33)) = 444,
        # long = int(444 * 1500 / 500) = 1332, one short of max_size.
        ((500, 1500), (444, 1332)),
        # capped, odd: size = int(round(1333 * 333 / 1001)) = int(round(443.45)) = 443, int(443 * 1001 / 333) = 1331
        ((333, 1001), (443, 1331)),
        ((600, 1000), (800, 1333)),  # 1333.33 > 1333: size = int(round(799.8)) = 800, int(1333.33) = 1333
    ],
)
def test_maskrcnn_benchmark_sizes(hw, expected) -> None:
    assert resized_hw(hw, _pre("maskrcnn_benchmark")) == expected


def test_maskrcnn_benchmark_sizes_of_the_text_preset() -> None:
    pre = r50_fpn1024_1class().preprocess  # 480 / 640
    assert pre.rounding == "maskrcnn_benchmark"
    assert resized_hw((480, 640), pre) == (480, 640)
    assert resized_hw((720, 1280), pre) == (360, 640)  # int(round(640 * 720 / 1280)) = 360, int(360 * 16 / 9) = 640
    # int(round(640 * 500 / 1500)) = 213, int(213 * 3) = 639; "round" would give (213, 640)
    assert resized_hw((500, 1500), pre) == (213, 639)
    assert resized_hw((500, 1500), _pre("round", 480, 640)) == (213, 640)
    # int(round(640 * 333 / 500)) = int(round(426.24)) = 426, int(426 * 500 / 333) = int(639.64) = 639
    assert resized_hw((333, 500), pre) == (426, 639)


@pytest.mark.parametrize(
    ("hw", "expected", "scale"),
    [
        ((480, 640), (800, 1067), Fraction(800, 480)),  # round(1066.67) = 1067 <= 1333
        ((640, 480), (1067, 800), Fraction(800, 480)),
        ((427, 640), (800, 1199), Fraction(800, 427)),
        ((500, 1500), (444, 1333), Fraction(1333, 1500)),  # round(2400) > 1333: im_scale = 1333 / 1500
        ((333, 1001), (443, 1333), Fraction(1333, 1001)),  # round(333 * 1.33167) = round(443.45) = 443
        # round(800 / 480 * 800) = round(1333.33) = 1333, not > 1333: im_scale stays 800 / 480
        ((480, 800), (800, 1333), Fraction(800, 480)),
        # 800 / 1600 * 2667 = 1333.5 exactly; np.round half to even gives 1334 > 1333: capped
        ((1600, 2667), (800, 1333), Fraction(1333, 2667)),
    ],
)
def test_detectron_sizes_and_im_scale(hw, expected, scale) -> None:
    pre = _pre("detectron")
    assert resized_hw(hw, pre) == expected
    assert resize_scale(hw, pre) == pytest.approx(float(scale), rel=1e-15)


def test_detectron_and_yhenon_caps_differ_in_the_scale_only() -> None:
    # 480x800 at 800/1333: 800 * 800 / 480 = 1333.33. yhenon's rule (long * scale > max) caps to
    # 1333 / 800; Detectron's (round(im_scale * long) > max) does not. Both resize to 800x1333.
    assert resized_hw((480, 800), _pre("round")) == resized_hw((480, 800), _pre("detectron")) == (800, 1333)
    assert resize_scale((480, 800), _pre("round")) == 1333 / 800
    assert resize_scale((480, 800), _pre("detectron")) == 800 / 480


def test_yhenon_scale() -> None:
    pre = YHENON.base_spec(Architecture()).preprocess  # 608 / 1024, Python round
    assert resize_scale((480, 640), pre) == 608 / 480 and resized_hw((480, 640), pre) == (608, 811)
    assert resize_scale((500, 1500), pre) == 1024 / 1500 and resized_hw((500, 1500), pre) == (341, 1024)
    assert resize_scale((480, 640), PreprocessSpec(resize="none")) == 1.0


def test_importers_set_their_framework_rounding() -> None:
    mb = MASKRCNN_BENCHMARK.base_spec(Architecture())
    d1 = DETECTRON.base_spec(Architecture())
    assert (mb.preprocess.rounding, mb.postprocess.rescale) == ("maskrcnn_benchmark", "per_axis")
    assert (d1.preprocess.rounding, d1.postprocess.rescale) == ("detectron", "uniform")
    assert resized_hw((480, 640), mb.preprocess) == (800, 1066)
    assert resized_hw((480, 640), d1.preprocess) == (800, 1067)
    for spec in (mb, d1):
        spec.validate()


def test_spec_validation_of_the_new_values() -> None:
    ModelSpec(preprocess=_pre("detectron")).validate()
    ModelSpec(preprocess=_pre("maskrcnn_benchmark")).validate()
    with pytest.raises(UsageError, match="maskrcnn_benchmark"):
        ModelSpec(preprocess=_pre("bankers")).validate()
    with pytest.raises(UsageError, match="rescale='uniform' needs one resize factor"):
        ModelSpec(preprocess=_pre("maskrcnn_benchmark"), postprocess=PostprocessSpec(rescale="uniform")).validate()
    with pytest.raises(UsageError, match="no single resize factor"):
        resize_scale((480, 640), _pre("round_half_up"))


# ---------------------------------------------------------------------------------- rescale
# One detection at level 3, location (y=10, x=50), anchor ratio 1 (size 24): detectron2 anchors
# and zero deltas give the box [400 - 12, 80 - 12, 400 + 12, 80 + 12] in resized pixels.
RESIZED_BOX = (388, 68, 412, 92)


def _one_box_spec(rescale: str) -> ModelSpec:
    spec = ModelSpec(
        fpn=FPNSpec(levels=[3, 4, 5]),
        head=HeadSpec(num_classes=1, num_anchors=3),
        anchors=AnchorSpec(sizes=[[24.0], [48.0], [96.0]], strides=[8, 16, 32]),
        preprocess=PreprocessSpec(min_size=608, max_size=1024, rounding="round"),  # yhenon's resize
        postprocess=PostprocessSpec(score_thresh=[0.05] * 3, clip="none", rescale=rescale),
    )
    spec.validate()
    return spec


def _one_box_outputs(spec: ModelSpec, input_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    out = {}
    for lv in spec.levels:
        h, w = -(-input_hw[0] // 2**lv), -(-input_hw[1] // 2**lv)
        out[f"cls_p{lv}"] = np.full((1, 3, h, w), -20.0, np.float32)
        out[f"box_p{lv}"] = np.zeros((1, 12, h, w), np.float32)
    out["cls_p3"][0, 1, 10, 50] = 5.0  # anchor 1 = ratio 1.0 (size-major, one size)
    return out


def _detect(rescale: str, original_hw: tuple[int, int]) -> tuple[np.ndarray, ImageMeta]:
    spec = _one_box_spec(rescale)
    batch = preprocess([np.zeros((*original_hw, 3), np.uint8)], spec)
    dets = postprocess(_one_box_outputs(spec, batch.images.shape[2:]), spec, batch.metas)[0]
    assert len(dets) == 1
    return dets.boxes[0].astype(np.float64), batch.metas[0]


def test_uniform_and_per_axis_rescale_on_a_non_exact_multiple() -> None:
    # yhenon 608/1024 on 480x640: scale = 608/480 = 19/15, resized 608 x round(810.67) = 811.
    uniform, meta = _detect("uniform", (480, 640))
    per_axis, _ = _detect("per_axis", (480, 640))
    assert meta.resized_hw == (608, 811)
    x1, y1, x2, y2 = RESIZED_BOX
    # uniform: divide by 19/15; per axis: x by 640/811, y by 480/608 (= 15/19 as 608 = 480 * 19/15)
    want_uniform = [x1 * 15 / 19, y1 * 15 / 19, x2 * 15 / 19, y2 * 15 / 19]  # 306.3158, 53.6842, 325.2632, 72.6316
    want_per_axis = [x1 * 640 / 811, y1 * 15 / 19, x2 * 640 / 811, y2 * 15 / 19]  # 306.1899, ..., 325.1295, ...
    np.testing.assert_allclose(uniform, want_uniform, rtol=0, atol=1e-4)
    np.testing.assert_allclose(per_axis, want_per_axis, rtol=0, atol=1e-4)
    # x differs by x * (15/19 - 640/811) = 0.1259 at x1 and 0.1337 at x2; y only by float32 rounding.
    diff = uniform - per_axis
    np.testing.assert_allclose(diff[[0, 2]], [x1 * (15 / 19 - 640 / 811), x2 * (15 / 19 - 640 / 811)], atol=1e-4)
    assert diff[0] == pytest.approx(0.1259, abs=1e-4) and diff[2] == pytest.approx(0.1337, abs=1e-4)
    np.testing.assert_allclose(diff[[1, 3]], 0.0, atol=1e-4)  # float32: divide vs multiply


def test_uniform_equals_per_axis_on_an_exact_multiple() -> None:
    # 480x480 -> 608x608: both rules divide by 19/15.
    uniform, _ = _detect("uniform", (480, 480))
    per_axis, _ = _detect("per_axis", (480, 480))
    np.testing.assert_allclose(uniform, per_axis, rtol=1e-6)


def test_detectron_divides_by_im_scale() -> None:
    # Detectron on 480x800: im_scale = 5/3 (not capped), resized 800x1333. A box's x2 at 1333 maps
    # to 1333 * 3/5 = 799.8 (per axis: 800); y is the same either way.
    spec = DETECTRON.base_spec(Architecture())
    meta = ImageMeta(original_hw=(480, 800), resized_hw=(800, 1333), input_hw=(896, 1408))
    boxes = np.array([[10.0, 20.0, 1333.0, 800.0]], np.float32)
    np.testing.assert_allclose(pp._to_original(boxes, meta, spec)[0], [6.0, 12.0, 799.8, 480.0], rtol=1e-6)
    np.testing.assert_allclose(pp._to_original(boxes, meta)[0], [10 * 800 / 1333, 12.0, 800.0, 480.0], rtol=1e-6)


def test_uniform_falls_back_to_per_axis_without_one_factor() -> None:
    spec = _one_box_spec("uniform")
    boxes = np.array([RESIZED_BOX], np.float32)
    per_axis = pp._to_original(boxes, ImageMeta((480, 640), (608, 811), (640, 832)))
    # Sizes the spec's resize does not give (set by hand) and a fixed stretch have no single factor.
    hand = ImageMeta(original_hw=(480, 640), resized_hw=(600, 800), input_hw=(608, 800))
    np.testing.assert_array_equal(pp._to_original(boxes, hand, spec), pp._to_original(boxes, hand))
    fixed = dataclasses.replace(spec, preprocess=dataclasses.replace(spec.preprocess, resize="fixed", fixed_size=[608, 811]))
    meta = ImageMeta(original_hw=(480, 640), resized_hw=resized_hw((480, 640), fixed.preprocess), input_hw=(640, 832))
    np.testing.assert_array_equal(pp._to_original(boxes, meta, fixed), per_axis)
