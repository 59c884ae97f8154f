"""Feature pyramid from C3..C5 with P6 (from C5 or P5) and P7 = conv(relu(P6))."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from retinanet_trt.spec import FPNSpec


class FPN(nn.Module):
    """[C3, C4, C5] -> [P3, ..., P_max] each (N, out_channels, H/2^l, W/2^l)."""

    def __init__(self, in_channels: list[int], spec: FPNSpec) -> None:
        super().__init__()
        ch = spec.out_channels
        self.upsample = spec.upsample
        self.p6_from = spec.p6_from
        self.levels = list(spec.levels)
        for level, c_in in zip((3, 4, 5), in_channels):
            self.add_module(f"lateral{level}", nn.Conv2d(c_in, ch, 1))
            self.add_module(f"output{level}", nn.Conv2d(ch, ch, 3, padding=1))
        if 6 in self.levels:
            self.p6 = nn.Conv2d(in_channels[-1] if spec.p6_from == "c5" else ch, ch, 3, stride=2, padding=1)
        if 7 in self.levels:
            self.p7 = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def _up(self, top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        if self.upsample == "size":  # torchvision: to the lateral's size, safe for odd sizes
            return F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
        return F.interpolate(top, scale_factor=2.0, mode="nearest")

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = feats
        inner5 = self.lateral5(c5)
        inner4 = self.lateral4(c4) + self._up(inner5, c4)
        inner3 = self.lateral3(c3) + self._up(inner4, c3)
        outs = [self.output3(inner3), self.output4(inner4), self.output5(inner5)]
        if 6 in self.levels:
            p6 = self.p6(c5 if self.p6_from == "c5" else outs[2])
            outs.append(p6)
            if 7 in self.levels:
                outs.append(self.p7(F.relu(p6)))
        return outs[: len(self.levels)]
