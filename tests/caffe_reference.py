"""A NumPy reference of the Caffe layer semantics a RetinaNet port uses (BVLC/caffe src/caffe/layers,
net.cpp, util/insert_splits.cpp, from ../shared/facts/mindspore-caffe.md C), run on the test's own
layer list in float64; nothing here calls the importer, the model or the export.

- the net runs its layers in order over named blobs: an in-place layer (top = bottom) overwrites its
  blob, so every later reader sees the new value; the image goes to the Input / DummyData top (a
  DummyData with the default constant filler keeps what the caller wrote into it);
- Net's checks: a top already written must be the layer's own bottom, and the blob an in-place layer
  overwrites may have no other reader (its split would leave the top "produced by multiple sources");
- Convolution: zero pad, output (in + 2p - k) / s + 1 rounded down, optional bias;
- Pooling MAX: output rounded up (round_mode CEIL) and, with padding, one fewer when the last
  window would start in the padding; each window clipped to the image, so padding never wins;
- Deconvolution: output s (in - 1) + k - 2p, grouped (group 1 by default: every input channel feeds
  every output), from the stored weights;
- BatchNorm: (x - blob0 / blob2) / sqrt(blob1 / blob2 + eps); Scale: x * blob0 (+ blob1);
- Eltwise SUM; ReLU.
"""

from __future__ import annotations

import math

import numpy as np
from caffe_factory import CaffeLayer


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, s: int, p: int) -> np.ndarray:
    n, _, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh, ow = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
    out = np.zeros((n, o, oh, ow))
    for ky in range(k):
        for kx in range(k):
            patch = xp[:, :, ky : ky + s * (oh - 1) + 1 : s, kx : kx + s * (ow - 1) + 1 : s]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, ky, kx], optimize=True)
    return out + (0 if b is None else b.reshape(1, -1, 1, 1))


def _pool_max(x: np.ndarray, k: int, s: int, p: int, ceil: bool) -> np.ndarray:
    h, w = x.shape[2:]

    def size(n: int) -> int:
        out = (math.ceil if ceil else math.floor)((n + 2 * p - k) / s) + 1
        if p and (out - 1) * s >= n + p:
            out -= 1
        return out

    oh, ow = size(h), size(w)
    out = np.full((*x.shape[:2], oh, ow), -np.inf)
    for i in range(oh):
        for j in range(ow):
            y0, x0 = i * s - p, j * s - p
            window = x[:, :, max(y0, 0) : min(y0 + k, h), max(x0, 0) : min(x0 + k, w)]
            out[:, :, i, j] = window.max(axis=(2, 3))
    return out


def _deconv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, s: int, p: int, group: int) -> np.ndarray:
    n, c, h, wd = x.shape
    k = w.shape[2]
    per_in, per_out = c // group, w.shape[1]
    full = np.zeros((n, per_out * group, s * (h - 1) + k, s * (wd - 1) + k))
    for g in range(group):
        xs = x[:, g * per_in : (g + 1) * per_in]
        ws = w[g * per_in : (g + 1) * per_in]  # (in per group, out per group, k, k)
        for ky in range(k):
            for kx in range(k):
                full[:, g * per_out : (g + 1) * per_out, ky : ky + s * h : s, kx : kx + s * wd : s] += np.einsum(
                    "nchw,co->nohw", xs, ws[:, :, ky, kx])
    out = full[:, :, p : full.shape[2] - p, p : full.shape[3] - p]
    return out + (0 if b is None else b.reshape(1, -1, 1, 1))


def check_dataflow(layers: list[CaffeLayer]) -> None:
    """ValueError where Caffe's Net would stop: a top written twice not in place, or an in-place layer
    on a blob that another layer also reads (InsertSplits renames that layer's bottom, and AppendTop
    then finds its top "produced by multiple sources")."""
    written: set[str] = set()
    readers: dict[str, int] = {}  # blob -> readers of its current value
    for layer in layers:
        for b in layer.bottom:
            readers[b] = readers.get(b, 0) + 1
        for j, t in enumerate(layer.top):
            in_place = j < len(layer.bottom) and layer.bottom[j] == t
            if t in written and not in_place:
                raise ValueError(f"Top blob '{t}' produced by multiple sources ({layer.name})")
            if in_place and readers[t] > 1:
                raise ValueError(f"Top blob '{t}' produced by multiple sources ({layer.name}, in place after a split)")
            written.add(t)
            readers[t] = 0


def run(layers: list[CaffeLayer], image: np.ndarray) -> dict[str, np.ndarray]:
    """image (N, 3, H, W) -> every blob's final value (in-place layers overwrite), float64."""
    check_dataflow(layers)
    blobs: dict[str, np.ndarray] = {"data": image.astype(np.float64)}  # a V1 net's `input: "data"`
    for layer in layers:
        params = layer.params
        x = [blobs[b] for b in layer.bottom]
        weights = [b.astype(np.float64) for b in layer.blobs]
        if layer.type in ("Input", "DummyData"):
            blobs[layer.top[0]] = image.astype(np.float64)
            continue
        if layer.type in ("Convolution", "Deconvolution"):
            p = params["convolution_param"]
            bias = weights[1].reshape(-1) if p.get("bias_term", True) else None
            if layer.type == "Convolution":
                y = _conv(x[0], weights[0], bias, p.get("stride", 1), p.get("pad", 0))
            else:
                y = _deconv(x[0], weights[0], bias, p.get("stride", 1), p.get("pad", 0), p.get("group", 1))
        elif layer.type == "Pooling":
            p = params["pooling_param"]
            y = _pool_max(x[0], p["kernel_size"], p.get("stride", 1), p.get("pad", 0), p.get("round_mode") != "FLOOR")
        elif layer.type == "BatchNorm":
            factor = 0.0 if weights[2][0] == 0 else 1.0 / weights[2][0]
            mean, var = weights[0] * factor, weights[1] * factor
            eps = params.get("batch_norm_param", {}).get("eps", 1e-5)
            y = (x[0] - mean.reshape(1, -1, 1, 1)) / np.sqrt(var.reshape(1, -1, 1, 1) + eps)
        elif layer.type == "Scale":
            y = x[0] * weights[0].reshape(1, -1, 1, 1)
            if params.get("scale_param", {}).get("bias_term", False):
                y = y + weights[1].reshape(1, -1, 1, 1)
        elif layer.type == "Eltwise":
            y = x[0] + x[1]
        elif layer.type == "ReLU":
            y = np.maximum(x[0], 0.0)
        else:
            raise ValueError(layer.type)
        blobs[layer.top[0]] = y
    return blobs


def head_outputs(layers: list[CaffeLayer], image: np.ndarray, tops: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Our outputs (cls_p3..cls_p7, box_p3..box_p7) as the port's blobs `tops` hold them after the net has
    run (default: the blobs rpn_head_{cls_logits,bbox_pred}_p<level>)."""
    blobs = run(layers, image)
    if tops is None:
        tops = {f"{'cls' if head == 'cls_logits' else 'box'}_p{lv}": f"rpn_head_{head}_p{lv}"
                for head in ("cls_logits", "bbox_pred") for lv in range(3, 8)}
    return {ours: blobs[blob] for ours, blob in tops.items()}
