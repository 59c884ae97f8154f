"""Anchor generation in NumPy, exact to each source framework (facts/checkpoint-formats.md §1d-5c).

Each level's anchors are (H*W*A, 4) float32 x1, y1, x2, y2 in network-input pixels, row-major
(y outer, x inner) with the anchor index a innermost, so row i matches the head output at
location i // A and anchor i % A (channels a*K + k and a*4 + c).

The generators differ in how one cell anchor is made and where a cell is centred:

- "torchvision": sizes taken as given (the preset truncates them to int), w = size/sqrt(ar),
  h = size*sqrt(ar) in float32, corners rounded half-to-even; centre at x*stride with
  stride = padded_input // feature per axis (so P6/P7 strides need not be powers of two).
- "detectron2": float corners +-w/2, +-h/2 (w = sqrt(size^2/ar), h = ar*w), centre at x*stride.
- "legacy": maskrcnn-benchmark / Detectron ``generate_anchors``: round the ratio at the
  stride-sized reference box, then scale, with +1 widths; centre at x*stride + (stride-1)/2.
- "yhenon": float corners as detectron2, centre at (x + 0.5)*stride.

The index a is r*S + s ("ratio_major") or s*R + r ("size_major"), with r over
spec.anchors.aspect_ratios in their given order (Detectron lists (1, 2, 0.5)).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from retinanet_trt.spec import ModelSpec


def _pairs(sizes: list[float], ratios: list[float], order: str) -> list[tuple[float, float]]:
    """(size, ratio) for each anchor index a, in the spec's order."""
    if order == "ratio_major":
        return [(s, r) for r in ratios for s in sizes]
    return [(s, r) for s in sizes for r in ratios]


def _cell_torchvision(pairs: list[tuple[float, float]]) -> np.ndarray:
    # torchvision works in float32 (AnchorGenerator's default dtype): h_ratio = sqrt(ar),
    # w_ratio = 1 / h_ratio, then torch.round, which rounds half to even like np.round.
    sizes = np.array([s for s, _ in pairs], dtype=np.float32)
    h_ratios = np.sqrt(np.array([r for _, r in pairs], dtype=np.float32))
    w_ratios = np.float32(1.0) / h_ratios
    ws = w_ratios * sizes
    hs = h_ratios * sizes
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2.0))


def _cell_float(pairs: list[tuple[float, float]]) -> np.ndarray:
    # detectron2 and yhenon compute in double, then store float32.
    rows = []
    for size, ratio in pairs:
        w = math.sqrt(size * size / ratio)
        h = ratio * w
        rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return np.array(rows, dtype=np.float64)


def _cell_legacy(pairs: list[tuple[float, float]], stride: int) -> np.ndarray:
    # Detectron's generate_anchors (float64): the reference box (0, 0, stride-1, stride-1) is
    # reshaped to each ratio with np.round (half to even) *before* scaling to the anchor size;
    # widths count pixels (+1), and the box keeps the reference centre (stride-1)/2.
    base = float(stride)
    ctr = 0.5 * (base - 1.0)
    rows = []
    for size, ratio in pairs:
        ws = np.round(np.sqrt(base * base / ratio))
        hs = np.round(ws * ratio)
        scale = size / base
        ws, hs = ws * scale, hs * scale
        rows.append([ctr - 0.5 * (ws - 1.0), ctr - 0.5 * (hs - 1.0), ctr + 0.5 * (ws - 1.0), ctr + 0.5 * (hs - 1.0)])
    return np.array(rows, dtype=np.float64)


def _grid(cell: np.ndarray, hw: tuple[int, int], stride_hw: tuple[int, int], offset: float) -> np.ndarray:
    """(H*W*A, 4) float32: cell anchors shifted to every location (y outer, x, anchor innermost).

    The sum is done in the cell's dtype: float32 as torchvision, detectron2 and maskrcnn-benchmark
    do it, float64 for yhenon, which casts once at the end.
    """
    h, w = hw
    sy, sx = stride_hw
    shift_x = ((np.arange(w, dtype=np.float64) + offset) * sx).astype(cell.dtype)
    shift_y = ((np.arange(h, dtype=np.float64) + offset) * sy).astype(cell.dtype)
    yy, xx = np.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = np.stack([xx.ravel(), yy.ravel(), xx.ravel(), yy.ravel()], axis=1)
    return (shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4).astype(np.float32, copy=False)


def _cell(key: tuple, level_index: int) -> np.ndarray:
    """(A, 4) cell anchors of one level: float32, or float64 for yhenon (cast after the grid sum)."""
    generator, order, sizes, ratios, strides = key
    pairs = _pairs(list(sizes[level_index]), list(ratios), order)
    if generator == "torchvision":
        return _cell_torchvision(pairs)
    if generator == "legacy":
        return _cell_legacy(pairs, strides[level_index]).astype(np.float32)
    if generator == "detectron2":
        return _cell_float(pairs).astype(np.float32)
    return _cell_float(pairs)


@lru_cache(maxsize=64)
def _grid_anchors_cached(
    key: tuple, input_hw: tuple[int, int], feature_hws: tuple[tuple[int, int], ...]
) -> tuple[np.ndarray, ...]:
    generator, strides = key[0], key[4]
    out = []
    for i, hw in enumerate(feature_hws):
        if generator == "torchvision":
            stride_hw = (input_hw[0] // hw[0], input_hw[1] // hw[1])
        else:
            stride_hw = (strides[i], strides[i])
        # The legacy (stride-1)/2 centre is already inside its cell anchors; yhenon centres cells.
        anchors = _grid(_cell(key, i), hw, stride_hw, 0.5 if generator == "yhenon" else 0.0)
        anchors.setflags(write=False)  # shared through the cache
        out.append(anchors)
    return tuple(out)


def _anchor_key(spec: ModelSpec) -> tuple:
    """The anchor fields of a spec as a hashable cache key (cheaper than hashing the whole spec)."""
    a = spec.anchors
    return (
        a.generator,
        a.order,
        tuple(tuple(float(s) for s in level) for level in a.sizes),
        tuple(float(r) for r in a.aspect_ratios),
        tuple(int(s) for s in a.strides),
    )


def cell_anchors(spec: ModelSpec, level_index: int) -> np.ndarray:
    """(A, 4) float32 anchors of one location before its grid shift, for spec.levels[level_index].

    The grid adds (x, y, x, y) * stride (yhenon: (x + 0.5, ...) * stride) to these.
    """
    return _cell(_anchor_key(spec), level_index).astype(np.float32)


def grid_anchors(spec: ModelSpec, input_hw: tuple[int, int], feature_hws: list[tuple[int, int]]) -> list[np.ndarray]:
    """Anchors per level: list of (H_l*W_l*A, 4) float32 x1y1x2y2, in input (padded) pixels.

    input_hw: the padded network input (H, W); feature_hws: (H_l, W_l) per level of spec.levels.
    Results are cached per (anchor spec, sizes) and read-only; copy before modifying.
    """
    if len(feature_hws) != len(spec.levels):
        raise ValueError(f"need one feature size per level {spec.levels}, got {len(feature_hws)}")
    hws = tuple((int(h), int(w)) for h, w in feature_hws)
    return list(_grid_anchors_cached(_anchor_key(spec), (int(input_hw[0]), int(input_hw[1])), hws))
