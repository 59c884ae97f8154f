"""Box coding between anchors and (dx, dy, dw, dh) deltas, in NumPy (facts §1e, 2d, 3d, 4d, 5d).

One formula covers every framework through BoxCoderSpec:

    w = x2 - x1 (+1 if plus_one);  cx = x1 + w/2
    dx = wx * (cx_g - cx_a) / w_a;  dw = ww * log(w_g / w_a)
    decode: cx = dx/wx * w_a + cx_a;  w = exp(min(dw/ww, scale_clamp)) * w_a
            x1 = cx - w/2;  x2 = cx + w/2 (-1 if plus_one)

Decoding runs in float32 like the frameworks do; encoding (training targets) in float64.
"""

from __future__ import annotations

import numpy as np

from retinanet_trt.spec import BoxCoderSpec


def decode(deltas: np.ndarray, anchors: np.ndarray, coder: BoxCoderSpec) -> np.ndarray:
    """deltas (M, 4) dx, dy, dw, dh and anchors (M, 4) x1y1x2y2 -> boxes (M, 4) float32 x1y1x2y2."""
    deltas = np.asarray(deltas, dtype=np.float32)
    anchors = np.asarray(anchors, dtype=np.float32)
    one = np.float32(1.0 if coder.plus_one else 0.0)
    half = np.float32(0.5)
    wx, wy, ww, wh = (np.float32(w) for w in coder.weights)
    widths = anchors[:, 2] - anchors[:, 0] + one
    heights = anchors[:, 3] - anchors[:, 1] + one
    ctr_x = anchors[:, 0] + half * widths
    ctr_y = anchors[:, 1] + half * heights
    dx = deltas[:, 0] / wx
    dy = deltas[:, 1] / wy
    dw = deltas[:, 2] / ww
    dh = deltas[:, 3] / wh
    if coder.scale_clamp is not None:
        # Clamped from above only, so exp cannot overflow on a wild prediction.
        clamp = np.float32(coder.scale_clamp)
        dw = np.minimum(dw, clamp)
        dh = np.minimum(dh, clamp)
    pred_cx = dx * widths + ctr_x
    pred_cy = dy * heights + ctr_y
    half_w = half * (np.exp(dw) * widths)
    half_h = half * (np.exp(dh) * heights)
    boxes = np.empty((deltas.shape[0], 4), dtype=np.float32)
    boxes[:, 0] = pred_cx - half_w
    boxes[:, 1] = pred_cy - half_h
    boxes[:, 2] = pred_cx + half_w - one
    boxes[:, 3] = pred_cy + half_h - one
    return boxes


def encode(boxes: np.ndarray, anchors: np.ndarray, coder: BoxCoderSpec) -> np.ndarray:
    """boxes (M, 4) ground truth and anchors (M, 4), both x1y1x2y2 -> deltas (M, 4) float32.

    The inverse of decode for boxes whose log size ratio stays under scale_clamp.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    anchors = np.asarray(anchors, dtype=np.float64)
    one = 1.0 if coder.plus_one else 0.0
    wx, wy, ww, wh = (float(w) for w in coder.weights)
    aw = anchors[:, 2] - anchors[:, 0] + one
    ah = anchors[:, 3] - anchors[:, 1] + one
    acx = anchors[:, 0] + 0.5 * aw
    acy = anchors[:, 1] + 0.5 * ah
    gw = boxes[:, 2] - boxes[:, 0] + one
    gh = boxes[:, 3] - boxes[:, 1] + one
    gcx = boxes[:, 0] + 0.5 * gw
    gcy = boxes[:, 1] + 0.5 * gh
    deltas = np.stack(
        [wx * (gcx - acx) / aw, wy * (gcy - acy) / ah, ww * np.log(gw / aw), wh * np.log(gh / ah)], axis=1
    )
    return deltas.astype(np.float32)
