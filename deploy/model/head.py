"""Class and box heads: one shared over all FPN levels, or one per level (MindSpore)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from retinanet_trt.spec import HeadSpec


class TowerConv(nn.Module):
    """3x3 conv + ReLU, or conv (no bias) + GroupNorm + ReLU (torchvision v2)."""

    def __init__(self, in_ch: int, out_ch: int, spec: HeadSpec) -> None:
        super().__init__()
        use_gn = spec.norm == "gn"
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=spec.bias and not use_gn)
        self.norm: nn.Module = nn.GroupNorm(spec.gn_groups, out_ch) if use_gn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class RetinaHead(nn.Module):
    """P_l (N, C, H, W) -> cls (N, A*K, H, W) and box (N, A*4, H, W), anchor-major channels."""

    def __init__(self, in_channels: int, spec: HeadSpec) -> None:
        super().__init__()
        ch = spec.channels
        self.cls_tower = nn.Sequential(*[TowerConv(in_channels if i == 0 else ch, ch, spec) for i in range(spec.num_convs)])
        self.box_tower = nn.Sequential(*[TowerConv(in_channels if i == 0 else ch, ch, spec) for i in range(spec.num_convs)])
        tower_out = ch if spec.num_convs else in_channels
        self.cls_pred = nn.Conv2d(tower_out, spec.num_anchors * spec.num_classes, 3, padding=1, bias=spec.bias)
        self.box_pred = nn.Conv2d(tower_out, spec.num_anchors * 4, 3, padding=1, bias=spec.bias)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.cls_pred.bias is not None:  # focal-loss prior: every anchor starts at probability prior_prob
            nn.init.constant_(self.cls_pred.bias, -math.log((1 - spec.prior_prob) / spec.prior_prob))

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_pred(self.cls_tower(feature)), self.box_pred(self.box_tower(feature))
