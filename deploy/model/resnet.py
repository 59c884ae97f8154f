"""ResNet 18/34/50/101/152 returning C3, C4, C5, with the stride in the 1x1 or the 3x3 conv."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from retinanet_trt.model.norms import ConvNorm
from retinanet_trt.model.padding import pad_same
from retinanet_trt.spec import BackboneSpec, NormSpec

BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def _residual(out: torch.Tensor, identity: torch.Tensor, projected: bool, spec: BackboneSpec) -> torch.Tensor:
    """relu(out + identity); MindSpore also applies ReLU to the branch and to a projected shortcut first."""
    if spec.relu_before_add:
        out = F.relu(out)
        if projected:
            identity = F.relu(identity)
    return F.relu(out + identity)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, spec: BackboneSpec) -> None:
        super().__init__()
        out_ch = width * self.expansion
        same = spec.padding == "tf_same"
        self.spec = spec
        self.conv1 = ConvNorm(in_ch, width, 3, stride, 1, spec.norm, same)
        self.conv2 = ConvNorm(width, out_ch, 3, 1, 1, spec.norm)
        self.downsample = ConvNorm(in_ch, out_ch, 1, stride, 0, spec.norm) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return _residual(self.conv2(F.relu(self.conv1(x))), identity, self.downsample is not None, self.spec)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, spec: BackboneSpec) -> None:
        super().__init__()
        out_ch = width * self.expansion
        same = spec.padding == "tf_same"
        self.spec = spec
        # MSRA/Caffe-trained weights (detectron2, maskrcnn-benchmark, Detectron) put the stride in
        # the first 1x1 conv; torchvision's "ResNet v1.5" (and MindSpore) puts it in the 3x3.
        s1, s3 = (stride, 1) if spec.stride_in_1x1 else (1, stride)
        self.conv1 = ConvNorm(in_ch, width, 1, s1, 0, spec.norm)
        self.conv2 = ConvNorm(width, width, 3, s3, 1, spec.norm, same)
        self.conv3 = ConvNorm(width, out_ch, 1, 1, 0, spec.norm)
        self.downsample = ConvNorm(in_ch, out_ch, 1, stride, 0, spec.norm) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        return _residual(self.conv3(out), identity, self.downsample is not None, self.spec)


class Stem(nn.Module):
    """7x7/2 conv + norm + ReLU + 3x3/2 max-pool: PyTorch p1 floor, Caffe p0 or p1 ceil_mode, or
    SAME_UPPER with -inf padding (MindSpore; it then pads the 7x7 conv the same way)."""

    def __init__(self, out_ch: int, norm: NormSpec, pool: str, padding: str) -> None:
        super().__init__()
        self.same = padding == "tf_same"
        self.conv = ConvNorm(3, out_ch, 7, 2, 3, norm, self.same)
        if self.same:
            self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0)
        elif pool == "pytorch":
            self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1 if pool == "caffe_ceil_p1" else 0, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        if self.same:
            x = pad_same(x, 3, 2, value=float("-inf"))
        return self.pool(x)


class ResNet(nn.Module):
    """images (N, 3, H, W) -> [C3 (N, c3, H/8, W/8), C4 (H/16), C5 (H/32)]."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        block = BasicBlock if spec.depth in (18, 34) else Bottleneck
        self.stem = Stem(spec.stem_channels, spec.norm, spec.stem_pool, spec.padding)
        in_ch = spec.stem_channels
        self.out_channels: list[int] = []
        for stage, n_blocks in enumerate(BLOCKS_PER_STAGE[spec.depth]):
            width = spec.width_per_group * 2**stage
            blocks = []
            for i in range(n_blocks):
                stride = 2 if (i == 0 and stage > 0) else 1
                blocks.append(block(in_ch, width, stride, spec))
                in_ch = width * block.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
            self.out_channels.append(in_ch)
        self.out_channels = self.out_channels[1:]  # C3, C4, C5

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.layer1(self.stem(x))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]
