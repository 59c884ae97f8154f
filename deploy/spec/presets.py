"""Named model specs: detectron2's RetinaNet R50-FPN, torchvision v1/v2, the seed notes' text
detector, and `tiny` (tests and the bundled demo)."""

from __future__ import annotations

import math
from collections.abc import Callable

from retinanet_trt.errors import UsageError
from retinanet_trt.spec import (
    AnchorSpec,
    BackboneSpec,
    BoxCoderSpec,
    FPNSpec,
    HeadSpec,
    ModelSpec,
    NormSpec,
    PostprocessSpec,
    PreprocessSpec,
)
from retinanet_trt.spec.coco import COCO_IDS, COCO_NAMES, TORCHVISION_NAMES

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CAFFE_MEAN_BGR = [102.9801, 115.9465, 122.7717]  # maskrcnn-benchmark / Detectron

# Classes of the synthetic shapes dataset the bundled demo model is trained on.
DEMO_CLASSES = ["circle", "square", "triangle", "star", "cross"]


def octave_sizes(base: float, scales: int = 3) -> list[float]:
    """[base, base*2^(1/3), base*2^(2/3)] as floats (detectron2, maskrcnn-benchmark)."""
    return [base * 2 ** (i / scales) for i in range(scales)]


def retinanet_r50_fpn() -> ModelSpec:
    """detectron2 COCO-Detection/retinanet_R_50_FPN (the spec defaults), 80 COCO classes."""
    spec = ModelSpec(name="retinanet_r50_fpn", source="detectron2")
    spec.preprocess.resize_impl = "pillow_uint8"  # ResizeShortestEdge: PIL bilinear on the uint8 image
    spec.postprocess.label_map = list(COCO_IDS)
    spec.postprocess.class_names = list(COCO_NAMES)
    return spec


def _torchvision(name: str, v2: bool) -> ModelSpec:
    return ModelSpec(
        name=name,
        source="torchvision",
        backbone=BackboneSpec(depth=50, stride_in_1x1=False, norm=NormSpec("frozen_bn", 1e-5 if v2 else 0.0)),
        fpn=FPNSpec(upsample="size", p6_from="c5" if v2 else "p5"),
        head=HeadSpec(num_classes=91, norm="gn" if v2 else "none"),
        anchors=AnchorSpec(
            # torchvision truncates the octave sizes to int: (32, 40, 50), (64, 80, 101), ...
            sizes=[[int(s * 2 ** (i / 3)) for i in range(3)] for s in (32, 64, 128, 256, 512)],
            order="ratio_major",
            generator="torchvision",
        ),
        box_coder=BoxCoderSpec(),
        preprocess=PreprocessSpec(
            channel_order="RGB", scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD, rounding="floor",
            resize_impl="torch_bilinear_float",  # GeneralizedRCNNTransform: normalise, then F.interpolate
        ),
        postprocess=PostprocessSpec(
            max_detections=300, clip="resized", drop_empty=False, label_map=list(range(91)),
            class_names=list(TORCHVISION_NAMES),
        ),
    )


def torchvision_v1() -> ModelSpec:
    """torchvision retinanet_resnet50_fpn: FrozenBN eps 0, P6 from P5, 91 channels = COCO ids."""
    return _torchvision("torchvision_v1", v2=False)


def torchvision_v2() -> ModelSpec:
    """torchvision retinanet_resnet50_fpn_v2: GroupNorm head, P6 from C5, eval BN eps 1e-5."""
    return _torchvision("torchvision_v2", v2=True)


def r50_fpn1024_1class() -> ModelSpec:
    """The seed notes' text detector: maskrcnn-benchmark RetinaNet with FPN and head at 1024
    channels, 1 class, P6 from C5, stride in the 1x1 conv, and a Caffe-style ceil stem pool."""
    return ModelSpec(
        name="r50_fpn1024_1class",
        source="maskrcnn_benchmark",
        backbone=BackboneSpec(depth=50, stride_in_1x1=True, norm=NormSpec("frozen_bn", 0.0), stem_pool="caffe_ceil"),
        fpn=FPNSpec(out_channels=1024, upsample="scale2", p6_from="c5"),
        head=HeadSpec(channels=1024, num_classes=1),
        anchors=AnchorSpec(
            sizes=[octave_sizes(s) for s in (32, 64, 128, 256, 512)], order="ratio_major", generator="legacy"
        ),
        box_coder=BoxCoderSpec(weights=[10.0, 10.0, 5.0, 5.0], scale_clamp=math.log(1000.0 / 16), plus_one=True),
        preprocess=PreprocessSpec(
            channel_order="BGR", scale=1.0, mean=CAFFE_MEAN_BGR, std=[1.0, 1.0, 1.0],
            min_size=480, max_size=640, rounding="maskrcnn_benchmark", resize_impl="pillow_uint8",
        ),
        postprocess=PostprocessSpec(
            nms_iou=0.4, nms_rule="ge", nms_plus_one=True, max_detections=100, clip="resized_minus1",
            drop_empty=False, label_map=[1], class_names=["text"],
        ),
    )


def tiny() -> ModelSpec:
    """A small ResNet-18-style RetinaNet (about 1.3 M parameters) for tests and the bundled demo."""
    return ModelSpec(
        name="tiny",
        source="retinanet_trt",
        backbone=BackboneSpec(depth=18, stride_in_1x1=False, stem_channels=16, width_per_group=16),
        fpn=FPNSpec(out_channels=48, upsample="scale2", p6_from="c5"),
        head=HeadSpec(num_convs=2, channels=48, num_classes=len(DEMO_CLASSES)),
        anchors=AnchorSpec(sizes=[octave_sizes(s) for s in (16, 32, 64, 128, 256)]),
        preprocess=PreprocessSpec(
            channel_order="RGB", scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            min_size=256, max_size=320, rounding="round_half_up", resize_impl="pillow_uint8",
        ),
        postprocess=PostprocessSpec(class_names=list(DEMO_CLASSES), label_map=list(range(1, len(DEMO_CLASSES) + 1))),
    )


PRESETS: dict[str, Callable[[], ModelSpec]] = {
    "retinanet_r50_fpn": retinanet_r50_fpn,
    "torchvision_v1": torchvision_v1,
    "torchvision_v2": torchvision_v2,
    "r50_fpn1024_1class": r50_fpn1024_1class,
    "tiny": tiny,
}


def get_preset(name: str) -> ModelSpec:
    """Return a fresh spec for a preset name; unknown names give a UsageError listing the choices."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
    spec = factory()
    spec.validate()
    return spec
