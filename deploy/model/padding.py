"""TensorFlow/MindSpore 'same' padding (SAME_UPPER) for strided convs and pools.

The total pad of one axis is (ceil(n / s) - 1) * s + k - n: half before, the odd pixel after (right,
bottom). The amounts are computed from the traced input size, so a static export folds them into
the Conv/MaxPool `pads` (onnxsim fuses the Pad), and a dynamic one keeps exact shape-dependent Pads.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of one axis of length `size`; kernel >= stride (else no pad)."""
    total = ((size + stride - 1) // stride - 1) * stride + kernel - size
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """x (N, C, H, W) padded for a k x k, stride-s window as SAME_UPPER does; value -inf for max-pools.

    A 1x1 kernel never needs padding (the total is <= 0 for every size), so it is returned as is;
    otherwise kernel >= stride keeps the total non-negative for every size, without a max() that
    tracing would freeze.
    """
    if kernel <= 1:
        return x
    if kernel < stride:
        raise ValueError(f"'same' padding needs kernel >= stride, got k={kernel} s={stride}")
    top, bottom = same_pads(x.shape[-2], kernel, stride)
    left, right = same_pads(x.shape[-1], kernel, stride)
    return F.pad(x, (left, right, top, bottom), value=value)
