"""yhenon/pytorch-retinanet: a plain state_dict ``.pt`` (coco_resnet_50_map_0_335_state_dict.pt).

Keys (facts sheet section 4a): conv1 / bn1 / layer{1..4}.{i}.conv{1,2,3} / bn{1,2,3} / downsample.{0,1}
(torchvision ResNet, stride in the 3x3), fpn.P{3,4,5}_1 (laterals) / P{3,4,5}_2 (outputs), fpn.P6
(from C5), fpn.P7_2, {classification,regression}Model.conv{1..4} and .output.

Conventions kept as the source has them: eval BN eps 1e-5, ratio-major anchors centred at
(x + 0.5) * stride, box deltas in (10, 10, 5, 5) units decoded without clamp or +1, no per-level
top-k, per-class NMS 0.5, no detection cap, clip x1, y1 >= 0 and x2, y2 <= the padded input,
RGB 0-1 ImageNet input resized to 608 / 1024 and padded by 32 - dim % 32.
"""

from __future__ import annotations

from retinanet_trt.importers.common import Architecture, Ignore, Importer, Rule, apply_architecture, set_coco_labels
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
from retinanet_trt.spec.presets import IMAGENET_MEAN, IMAGENET_STD, octave_sizes

_NORM = r"(weight|bias|running_mean|running_var)"
_HEADS = {"classificationModel": "cls", "regressionModel": "box"}


class YhenonImporter(Importer):
    name = "yhenon"
    title = "yhenon/pytorch-retinanet"
    rules = (
        Rule(r"conv1\.weight", "backbone.stem.conv.conv.weight"),
        Rule(rf"bn1\.{_NORM}", r"backbone.stem.conv.norm.\1"),
        Rule(r"layer(\d)\.(\d+)\.conv(\d)\.weight", r"backbone.layer\1.\2.conv\3.conv.weight"),
        Rule(rf"layer(\d)\.(\d+)\.bn(\d)\.{_NORM}", r"backbone.layer\1.\2.conv\3.norm.\4"),
        Rule(r"layer(\d)\.(\d+)\.downsample\.0\.weight", r"backbone.layer\1.\2.downsample.conv.weight"),
        Rule(rf"layer(\d)\.(\d+)\.downsample\.1\.{_NORM}", r"backbone.layer\1.\2.downsample.norm.\3"),
        Rule(r"fpn\.P([3-5])_1\.(weight|bias)", r"fpn.lateral\1.\2"),
        Rule(r"fpn\.P([3-5])_2\.(weight|bias)", r"fpn.output\1.\2"),
        Rule(r"fpn\.P6\.(weight|bias)", r"fpn.p6.\1"),
        Rule(r"fpn\.P7_2\.(weight|bias)", r"fpn.p7.\1"),  # P7_1 is the ReLU
        Rule(r"(classificationModel|regressionModel)\.conv([1-9])\.(weight|bias)",
             lambda m: f"head.{_HEADS[m.group(1)]}_tower.{int(m.group(2)) - 1}.conv.{m.group(3)}"),
        Rule(r"(classificationModel|regressionModel)\.output\.(weight|bias)",
             lambda m: f"head.{_HEADS[m.group(1)]}_pred.{m.group(2)}"),
    )
    ignores = (Ignore(r".*\.num_batches_tracked", "BatchNorm step counter"),)

    def base_spec(self, arch: Architecture) -> ModelSpec:
        spec = ModelSpec(
            name="yhenon_retinanet",
            source=self.name,
            backbone=BackboneSpec(stride_in_1x1=False, norm=NormSpec("frozen_bn", 1e-5)),
            fpn=FPNSpec(upsample="scale2"),
            head=HeadSpec(),
            anchors=AnchorSpec(
                sizes=[octave_sizes(s) for s in (32, 64, 128, 256, 512)], order="ratio_major", generator="yhenon"
            ),
            box_coder=BoxCoderSpec(weights=[10.0, 10.0, 5.0, 5.0], scale_clamp=None, plus_one=False),
            preprocess=PreprocessSpec(
                channel_order="RGB", scale=1 / 255, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
                min_size=608, max_size=1024, rounding="round", size_divisibility=32, pad_extra_when_divisible=True,
                resize_impl="skimage_float",  # Normalizer, then Resizer's skimage.transform.resize
            ),
            postprocess=PostprocessSpec(
                score_thresh=[0.05] * 5, topk_per_level=None, nms_iou=0.5, nms_rule="gt", nms_plus_one=False,
                max_detections=None, clip="padded_lower", drop_empty=False, rescale="uniform",
            ),
        )
        apply_architecture(spec, arch)
        set_coco_labels(spec, first_label=0)
        return spec


IMPORTER = YhenonImporter()
