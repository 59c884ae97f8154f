"""ResNet 18/34/50/101 returning C3, C4, C5, with the stride in the 1x1 or the 3x3 conv."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from retinanet_trt.model.norms import ConvNorm
from retinanet_trt.spec import BackboneSpec, NormSpec

BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, spec: BackboneSpec) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = ConvNorm(in_ch, width, 3, stride, 1, spec.norm)
        self.conv2 = ConvNorm(width, out_ch, 3, 1, 1, spec.norm)
        self.downsample = ConvNorm(in_ch, out_ch, 1, stride, 0, spec.norm) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv2(F.relu(self.conv1(x))) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, spec: BackboneSpec) -> None:
        super().__init__()
        out_ch = width * self.expansion
        # MSRA/Caffe-trained weights (detectron2, maskrcnn-benchmark, Detectron) put the stride in
        # the first 1x1 conv; torchvision's "ResNet v1.5" puts it in the 3x3.
        s1, s3 = (stride, 1) if spec.stride_in_1x1 else (1, stride)
        self.conv1 = ConvNorm(in_ch, width, 1, s1, 0, spec.norm)
        self.conv2 = ConvNorm(width, width, 3, s3, 1, spec.norm)
        self.conv3 = ConvNorm(width, out_ch, 1, 1, 0, spec.norm)
        self.downsample = ConvNorm(in_ch, out_ch, 1, stride, 0, spec.norm) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        return F.relu(self.conv3(out) + identity)


class Stem(nn.Module):
    """7x7/2 conv + norm + ReLU + 3x3/2 max-pool (PyTorch: p1 floor; Caffe: p0 ceil_mode)."""

    def __init__(self, out_ch: int, norm: NormSpec, pool: str) -> None:
        super().__init__()
        self.conv = ConvNorm(3, out_ch, 7, 2, 3, norm)
        if pool == "caffe_ceil":
            self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        else:
            self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.conv(x)))


class ResNet(nn.Module):
    """images (N, 3, H, W) -> [C3 (N, c3, H/8, W/8), C4 (H/16), C5 (H/32)]."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        block = BasicBlock if spec.depth in (18, 34) else Bottleneck
        self.stem = Stem(spec.stem_channels, spec.norm, spec.stem_pool)
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
