"""Fold frozen norms into the preceding conv, so the exported graph has one Conv per ConvNorm."""

from __future__ import annotations

import copy

import torch
from torch import nn

from retinanet_trt.model.norms import ConvNorm


@torch.no_grad()
def fold_frozen_norms(model: nn.Module) -> tuple[nn.Module, int]:
    """Return a copy of `model` where every ConvNorm is one biased conv, and the number folded.

    conv(x) * scale + shift == conv'(x) with W' = W * scale[:, None, None, None] and b' = shift
    (+ b * scale when the conv had a bias). Computed in float64 so folding adds no error of its own.
    """
    folded = copy.deepcopy(model)
    count = 0
    for module in folded.modules():
        if not isinstance(module, ConvNorm):
            continue
        conv = module.conv
        scale, shift = (t.double() for t in module.norm.scale_and_shift())  # type: ignore[operator]
        weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
        bias = shift + (conv.bias.double() * scale if conv.bias is not None else 0.0)
        fused = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, bias=True,
        )
        fused.weight.copy_(weight.to(conv.weight.dtype))
        fused.bias.copy_(bias.to(conv.weight.dtype))
        module.conv = fused
        module.norm = nn.Identity()
        count += 1
    return folded.eval(), count
