"""RetinaNet = ResNet + FPN + heads (shared or per level); raw per-level outputs, no post-processing."""

from __future__ import annotations

import torch
from torch import nn

from retinanet_trt.model.fpn import FPN
from retinanet_trt.model.head import RetinaHead
from retinanet_trt.model.norms import FrozenNorm
from retinanet_trt.model.resnet import ResNet
from retinanet_trt.spec import ModelSpec


def output_names(spec: ModelSpec) -> list[str]:
    """['cls_p3', ..., 'cls_p7', 'box_p3', ..., 'box_p7'] for the spec's levels."""
    return [f"cls_p{lv}" for lv in spec.levels] + [f"box_p{lv}" for lv in spec.levels]


class RetinaNet(nn.Module):
    """images (N, 3, H, W) float32 -> (cls_p3..cls_pL, box_p3..box_pL).

    cls_pl is (N, A*K, H/2^l, W/2^l) logits, box_pl is (N, A*4, H/2^l, W/2^l) deltas, both
    anchor-major (channel a*K + k and a*4 + c).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        spec.validate()
        self.spec = spec
        self.backbone = ResNet(spec.backbone)
        self.fpn = FPN(self.backbone.out_channels, spec.fpn, same_pad=spec.backbone.padding == "tf_same")
        # An unshared head is a ModuleList, head.{i} for level levels[i].
        self.head: nn.Module = (
            RetinaHead(spec.fpn.out_channels, spec.head) if spec.head.shared
            else nn.ModuleList(RetinaHead(spec.fpn.out_channels, spec.head) for _ in spec.levels)
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.fpn(self.backbone(images))
        heads = list(self.head) if isinstance(self.head, nn.ModuleList) else [self.head] * len(features)
        outs = [head(f) for head, f in zip(heads, features)]
        return tuple(c for c, _ in outs) + tuple(b for _, b in outs)


def build_model(spec: ModelSpec, seed: int | None = None) -> RetinaNet:
    """Build the model in eval mode; with a seed, give every weight and frozen-norm statistic a
    random, well-scaled value (so parity checks exercise BN folding with non-trivial numbers)."""
    if seed is not None:
        torch.manual_seed(seed)
    model = RetinaNet(spec).eval()
    if seed is not None:
        with torch.no_grad():
            randomize_frozen_norms(model, seed)
    return model


def randomize_frozen_norms(model: nn.Module, seed: int) -> None:
    """Random frozen-norm statistics that keep activations of order 1 through a deep ResNet, and
    head weights large enough that outputs vary over the image (the trained-head init of std 0.01
    would make every logit nearly equal and parity checks blind)."""
    gen = torch.Generator().manual_seed(seed)
    head = getattr(model, "head", None)
    if head is not None:
        for conv in head.modules():
            if isinstance(conv, nn.Conv2d):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
    for module in model.modules():
        if isinstance(module, FrozenNorm):
            n = module.weight.numel()
            module.weight.copy_(0.5 + 0.5 * torch.rand(n, generator=gen))
            module.bias.copy_(0.1 * torch.randn(n, generator=gen))
            if module.kind == "frozen_bn":
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
