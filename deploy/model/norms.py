"""Frozen normalisation layers and the conv+norm unit that export folds into one conv."""

from __future__ import annotations

import torch
from torch import nn

from retinanet_trt.model.padding import pad_same
from retinanet_trt.spec import NormSpec


class FrozenNorm(nn.Module):
    """Per-channel affine y = (x - mean) / sqrt(var + eps) * weight + bias with frozen buffers.

    Covers FrozenBatchNorm2d (eps 1e-5 or 0), eval-mode BatchNorm2d and Detectron's AffineChannel
    (kind "affine": mean 0, var 1, eps 0, so y = x * weight + bias). x: (N, C, H, W).
    """

    def __init__(self, channels: int, spec: NormSpec) -> None:
        super().__init__()
        self.kind = spec.kind
        self.eps = 0.0 if spec.kind == "affine" else float(spec.eps)
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        if spec.kind == "frozen_bn":
            self.register_buffer("running_mean", torch.zeros(channels))
            self.register_buffer("running_var", torch.ones(channels))

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C,), (C,): the per-channel multiplier and offset this layer applies."""
        if self.kind == "affine":
            return self.weight, self.bias
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_and_shift()
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


class ConvNorm(nn.Module):
    """conv (no bias) followed by a frozen norm; `fold_frozen_norms` turns it into one biased conv.

    same_pad: a strided conv pads SAME_UPPER (MindSpore 'same') instead of `padding` on both sides;
    stride-1 convs with odd kernels pad k // 2 either way.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, padding: int, norm: NormSpec, same_pad: bool = False
    ) -> None:
        super().__init__()
        self.same_window = (kernel, stride) if same_pad and stride > 1 else None
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, 0 if self.same_window else padding, bias=False)
        self.norm: nn.Module = FrozenNorm(out_ch, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_window is not None:
            x = pad_same(x, *self.same_window)
        return self.norm(self.conv(x))
