"""Anchors against the per-framework values in facts/checkpoint-formats.md (§1d, 2c, 3c, 4c, 5c)."""

from __future__ import annotations

import numpy as np
import pytest

from retinanet_trt.runtime.anchors import cell_anchors, grid_anchors
from retinanet_trt.spec import AnchorSpec, BoxCoderSpec, ModelSpec
from retinanet_trt.spec.presets import get_preset, octave_sizes

LEVELS_800x1216 = [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]


def _legacy_spec(order: str, ratios: list[float]) -> ModelSpec:
    return ModelSpec(
        anchors=AnchorSpec(sizes=[octave_sizes(s) for s in (32, 64, 128, 256, 512)], aspect_ratios=ratios,
                           order=order, generator="legacy"),
        box_coder=BoxCoderSpec(plus_one=True),
    )


def _symmetric(half_wh: list[tuple[float, float]]) -> np.ndarray:
    return np.array([[-w, -h, w, h] for w, h in half_wh], dtype=np.float32)


def test_torchvision_p3_cell_anchors_rounded_ratio_major() -> None:
    expected = _symmetric([(23, 11), (28, 14), (35, 18), (16, 16), (20, 20), (25, 25), (11, 23), (14, 28), (18, 35)])
    np.testing.assert_array_equal(cell_anchors(get_preset("torchvision_v1"), 0), expected)


def test_torchvision_int_sizes_round_half_to_even() -> None:
    # Square anchors are +-size/2, rounded half to even: 101/2 -> 50, 203/2 -> 102, 645/2 -> 322.
    spec = get_preset("torchvision_v1")
    halves = [cell_anchors(spec, i)[3:6, 2].tolist() for i in range(5)]
    assert halves == [[16, 20, 25], [32, 40, 50], [64, 80, 102], [128, 161, 203], [256, 322, 406]]


def test_torchvision_stride_is_image_over_feature() -> None:
    # Padded height 800: P6 is 13 rows, P7 7 rows, so strides are 800 // 13 = 61 and 800 // 7 = 114.
    spec = get_preset("torchvision_v1")
    anchors = grid_anchors(spec, (800, 1216), LEVELS_800x1216)
    a = 9
    p6, p7 = anchors[3], anchors[4]
    cell6, cell7 = cell_anchors(spec, 3), cell_anchors(spec, 4)
    w6, w7 = 19, 10
    np.testing.assert_array_equal(p6[(1 * w6 + 1) * a : (1 * w6 + 2) * a], cell6 + [64, 61, 64, 61])
    np.testing.assert_array_equal(p7[(2 * w7 + 3) * a : (2 * w7 + 4) * a], cell7 + [3 * 121, 2 * 114, 3 * 121, 2 * 114])


def test_detectron2_p3_cell_anchors_float_size_major() -> None:
    expected = _symmetric([
        (22.627, 11.314), (16, 16), (11.314, 22.627),
        (28.509, 14.254), (20.159, 20.159), (14.254, 28.509),
        (35.919, 17.959), (25.398, 25.398), (17.959, 35.919),
    ])
    np.testing.assert_allclose(cell_anchors(get_preset("retinanet_r50_fpn"), 0), expected, atol=1e-3)


MB_P3 = [
    (-18, -8, 25, 15), (-23.718, -11.119, 30.718, 18.119), (-30.923, -15.049, 37.923, 22.049),
    (-12, -12, 19, 19), (-16.159, -16.159, 23.159, 23.159), (-21.398, -21.398, 28.398, 28.398),
    (-8, -20, 15, 27), (-11.119, -26.238, 18.119, 33.238), (-15.049, -34.098, 22.049, 41.098),
]


def test_maskrcnn_benchmark_p3_legacy_ratio_major() -> None:
    cell = cell_anchors(_legacy_spec("ratio_major", [0.5, 1.0, 2.0]), 0)
    np.testing.assert_allclose(cell, np.array(MB_P3, dtype=np.float32), atol=1e-3)
    # The first anchor is 44 x 24 pixels counted with +1 widths, centred at (stride - 1) / 2 = 3.5.
    assert cell[0, 2] - cell[0, 0] + 1 == 44 and cell[0, 3] - cell[0, 1] + 1 == 24
    assert (cell[:, 0] + cell[:, 2]) / 2 == pytest.approx([3.5] * 9)


def test_detectron_p3_legacy_octave_major_with_ratios_1_2_half() -> None:
    cell = cell_anchors(_legacy_spec("size_major", [1.0, 2.0, 0.5]), 0)
    mb = np.array(MB_P3, dtype=np.float32)
    # Same set as maskrcnn-benchmark: a = 3*octave + r over ratios (1, 2, 0.5).
    expected = np.stack([mb[3 * r + s] for s in range(3) for r in (1, 2, 0)])
    np.testing.assert_allclose(cell, expected, atol=1e-3)


def test_yhenon_centre_half_cell_and_ratio_major() -> None:
    spec = ModelSpec(anchors=AnchorSpec(order="ratio_major", generator="yhenon"),
                     box_coder=BoxCoderSpec(weights=[10, 10, 5, 5], scale_clamp=None))
    d2 = cell_anchors(get_preset("retinanet_r50_fpn"), 0)
    # The detectron2 set, ratio-major instead of size-major.
    np.testing.assert_allclose(cell_anchors(spec, 0), d2.reshape(3, 3, 4).transpose(1, 0, 2).reshape(9, 4), atol=1e-4)
    anchors = grid_anchors(spec, (64, 96), [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)])
    centres = (anchors[0][:, :2] + anchors[0][:, 2:]) / 2
    # Location (y=2, x=5) of P3 is centred at ((5 + 0.5) * 8, (2 + 0.5) * 8).
    np.testing.assert_allclose(centres[(2 * 12 + 5) * 9 : (2 * 12 + 6) * 9], [[44.0, 20.0]] * 9, atol=1e-4)


@pytest.mark.parametrize("preset", ["retinanet_r50_fpn", "torchvision_v1", "r50_fpn1024_1class", "tiny"])
def test_grid_is_row_major_with_anchor_innermost(preset: str) -> None:
    spec = get_preset(preset)
    hws = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    anchors = grid_anchors(spec, (64, 96), hws)
    a = spec.head.num_anchors
    for i, ((h, w), level) in enumerate(zip(hws, anchors, strict=True)):
        assert level.shape == (h * w * a, 4) and level.dtype == np.float32
        stride_y, stride_x = (64 // h, 96 // w) if spec.anchors.generator == "torchvision" else (spec.anchors.strides[i],) * 2
        cell = cell_anchors(spec, i)
        for y, x in [(0, 0), (h - 1, w - 1), (h // 2, w - 1)]:
            shift = np.array([x * stride_x, y * stride_y] * 2, dtype=np.float32)
            np.testing.assert_array_equal(level[(y * w + x) * a : (y * w + x + 1) * a], cell + shift)


def test_cached_and_read_only() -> None:
    spec = get_preset("tiny")
    first = grid_anchors(spec, (64, 96), [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)])
    again = grid_anchors(get_preset("tiny"), (64, 96), [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)])
    assert all(x is y for x, y in zip(first, again, strict=True))
    with pytest.raises(ValueError):
        first[0][0, 0] = 1.0
    with pytest.raises(ValueError, match="one feature size per level"):
        grid_anchors(spec, (64, 96), [(8, 12)])
