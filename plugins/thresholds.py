"""Exact float32 bounds for the in-graph comparisons: the logit a score threshold becomes, and the
IoU bound NonMaxSuppression's strict rule needs to act as each framework's rule."""

from __future__ import annotations

import numpy as np

from retinanet_trt.runtime.postprocess import sigmoid

FLOAT_EXACT_INT = 2**24  # integers up to here are exact in float32 (the flat-order sort key)


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


