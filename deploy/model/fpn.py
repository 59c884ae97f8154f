"""Feature pyramid from C3..C5 with P6 (from C5 or P5) and P7 = conv(relu(P6))."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from retinanet_trt.model.padding import pad_same
from retinanet_trt.spec import FPNSpec


def bilinear_deconv_weight(channels: int, kernel: int = 4, per_group: int = 1) -> torch.Tensor:
    """(C, C/groups, k, k) weights of Caffe's "bilinear" filler, which fills every kernel the same:
    with group C, stride 2 and pad 1 a x2 half-pixel bilinear upsampling inside the map,
    zero-padded at its borders."""
    f = (kernel + 1) // 2
    c = (kernel - 1) / (2.0 * f)
    taps = 1.0 - torch.abs(torch.arange(kernel, dtype=torch.float64) / f - c)
    return (taps[:, None] * taps[None, :]).to(torch.float32).expand(channels, per_group, kernel, kernel).clone()


class FPN(nn.Module):
    """[C3, C4, C5] -> [P3, ..., P_max] each (N, out_channels, H/2^l, W/2^l).

    same_pad: P6/P7 (stride 2) pad SAME_UPPER like the backbone (MindSpore). With
    spec.head_reads_relu_p6 the P6 returned is relu(P6), the one P7 reads too (a Caffe port's
    in-place ReLU).
    """

    def __init__(self, in_channels: list[int], spec: FPNSpec, same_pad: bool = False) -> None:
        super().__init__()
        ch = spec.out_channels
        self.upsample = spec.upsample
        self.p6_from = spec.p6_from
        self.levels = list(spec.levels)
        self.same_pad = same_pad
        self.relu_p6_out = spec.head_reads_relu_p6
        for level, c_in in zip((3, 4, 5), in_channels):
            self.add_module(f"lateral{level}", nn.Conv2d(c_in, ch, 1, bias=spec.bias))
            self.add_module(f"output{level}", nn.Conv2d(ch, ch, 3, padding=1, bias=spec.bias))
        if spec.upsample == "deconv":
            groups = spec.deconv_groups or ch
            for level in (3, 4):  # upsample{l}: the top-down map to level l's size
                deconv = nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1, groups=groups, bias=False)
                with torch.no_grad():
                    deconv.weight.copy_(bilinear_deconv_weight(ch, per_group=ch // groups))
                self.add_module(f"upsample{level}", deconv)
        pad = 0 if same_pad else 1
        if 6 in self.levels:
            self.p6 = nn.Conv2d(in_channels[-1] if spec.p6_from == "c5" else ch, ch, 3, stride=2, padding=pad, bias=spec.bias)
        if 7 in self.levels:
            self.p7 = nn.Conv2d(ch, ch, 3, stride=2, padding=pad, bias=spec.bias)

    def _up(self, top: torch.Tensor, lateral: torch.Tensor, level: int) -> torch.Tensor:
        if self.upsample == "size":  # torchvision, MindSpore: to the lateral's size, safe for odd sizes
            return F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
        if self.upsample == "deconv":  # exactly 2x: Caffe's Eltwise then needs the lateral at 2x too
            return getattr(self, f"upsample{level}")(top)
        return F.interpolate(top, scale_factor=2.0, mode="nearest")

    def _strided(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return conv(pad_same(x, 3, 2) if self.same_pad else x)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = feats
        inner5 = self.lateral5(c5)
        inner4 = self.lateral4(c4) + self._up(inner5, c4, 4)
        inner3 = self.lateral3(c3) + self._up(inner4, c3, 3)
        outs = [self.output3(inner3), self.output4(inner4), self.output5(inner5)]
        if 6 in self.levels:
            p6 = self._strided(self.p6, c5 if self.p6_from == "c5" else outs[2])
            relu_p6 = F.relu(p6) if self.relu_p6_out or 7 in self.levels else p6
            outs.append(relu_p6 if self.relu_p6_out else p6)
            if 7 in self.levels:
                outs.append(self._strided(self.p7, relu_p6))
        return outs[: len(self.levels)]
