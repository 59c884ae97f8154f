"""Box coder: hand-computed decodes per convention (facts §1e, 3d, 4d, 5d) and encode/decode round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retinanet_trt.runtime.box_coder import decode, encode
from retinanet_trt.spec import BoxCoderSpec

CLAMP = math.log(1000.0 / 16)
CODERS = {
    "torchvision/detectron2": BoxCoderSpec([1.0, 1.0, 1.0, 1.0], CLAMP, False),
    "maskrcnn_benchmark": BoxCoderSpec([10.0, 10.0, 5.0, 5.0], CLAMP, True),
    "detectron": BoxCoderSpec([1.0, 1.0, 1.0, 1.0], CLAMP, True),
    "yhenon": BoxCoderSpec([10.0, 10.0, 5.0, 5.0], None, False),
}


def test_decode_unit_weights_no_plus_one() -> None:
    # Anchor 10 x 20 centred at (5, 10); move the centre by (0.1 w, 0.2 h), double the width.
    boxes = decode(np.array([[0.1, 0.2, math.log(2.0), 0.0]]), np.array([[0.0, 0.0, 10.0, 20.0]]), CODERS["torchvision/detectron2"])
    np.testing.assert_allclose(boxes, [[-4.0, 4.0, 16.0, 24.0]], atol=1e-5)
    assert boxes.dtype == np.float32


def test_decode_plus_one_legacy() -> None:
    # (0, 0, 9, 19) is 10 x 20 pixels with +1 widths, centre (5, 10); x2 = cx + w/2 - 1.
    boxes = decode(np.array([[1.0, 2.0, 5 * math.log(2.0), 0.0]]), np.array([[0.0, 0.0, 9.0, 19.0]]), CODERS["maskrcnn_benchmark"])
    np.testing.assert_allclose(boxes, [[-4.0, 4.0, 15.0, 23.0]], atol=1e-5)


def test_scale_clamp_from_above_only() -> None:
    anchor = np.array([[0.0, 0.0, 16.0, 16.0]])
    wide = decode(np.array([[0.0, 0.0, 10.0, -6.0]]), anchor, CODERS["torchvision/detectron2"])
    # dw is clamped to log(1000/16): the width becomes 1000; dh = -6 is left alone.
    assert wide[0, 2] - wide[0, 0] == pytest.approx(1000.0, rel=1e-5)
    assert wide[0, 3] - wide[0, 1] == pytest.approx(16 * math.exp(-6.0), rel=1e-4)
    unclamped = decode(np.array([[0.0, 0.0, 50.0, 0.0]]), anchor, CODERS["yhenon"])  # dw = 50 / 5 = 10
    assert unclamped[0, 2] - unclamped[0, 0] == pytest.approx(16 * math.exp(10.0), rel=1e-5)


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(-50, 800, size=(n, 2))
    wh = rng.uniform(8, 400, size=(n, 2))  # size ratios < 1000/16, so the clamp never bites
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.mark.parametrize("name", list(CODERS))
def test_decode_inverts_encode(name: str) -> None:
    rng = np.random.default_rng(0)
    coder = CODERS[name]
    anchors, boxes = _random_boxes(rng, 5000), _random_boxes(rng, 5000)
    deltas = encode(boxes, anchors, coder)
    assert deltas.shape == (5000, 4) and deltas.dtype == np.float32
    # float32 decode keeps about 1e-6 relative on coordinates up to ~1200.
    np.testing.assert_allclose(decode(deltas, anchors, coder), boxes, rtol=0, atol=2e-3)


@pytest.mark.parametrize("name", list(CODERS))
def test_encode_of_the_anchor_itself_is_zero(name: str) -> None:
    anchors = _random_boxes(np.random.default_rng(1), 100)
    np.testing.assert_allclose(encode(anchors, anchors, CODERS[name]), 0.0, atol=1e-6)


def test_weights_scale_the_deltas() -> None:
    rng = np.random.default_rng(2)
    anchors, boxes = _random_boxes(rng, 50), _random_boxes(rng, 50)
    unit = encode(boxes, anchors, BoxCoderSpec([1, 1, 1, 1], CLAMP, False))
    weighted = encode(boxes, anchors, BoxCoderSpec([10, 10, 5, 5], CLAMP, False))
    np.testing.assert_allclose(weighted, unit * np.array([10, 10, 5, 5], dtype=np.float32), rtol=1e-5, atol=1e-5)
