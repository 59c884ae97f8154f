"""torchvision retinanet_resnet50_fpn (v1: legacy and current key layouts) and _v2 (GroupNorm head).

Keys (facts sheet section 1a/1b): backbone.body.* (ResNet, stride in the 3x3, BN as bn1..3 and
downsample.{0,1}), backbone.fpn.inner_blocks.{i}[.0] / layer_blocks.{i}[.0] (i = 0,1,2 <-> C3..C5;
the ".0" layout is current, without it legacy), extra_blocks.p6/p7, and
head.{classification,regression}_head.conv.{2i} (legacy) or conv.{i}.0 (+ conv.{i}.1 GroupNorm in
v2), cls_logits, bbox_reg. v1's COCO weights (91 classes) run with FrozenBN eps 0 (overwrite_eps),
fine-tuned v1 models and v2 with eps 1e-5. Anchors, coder, thresholds and the 91-channel COCO-id
class axis come from the presets.
"""

from __future__ import annotations

import re

from retinanet_trt.importers.common import Architecture, Ignore, Importer, Rule, apply_architecture
from retinanet_trt.spec import ModelSpec
from retinanet_trt.spec.presets import torchvision_v1, torchvision_v2

_NORM = r"(weight|bias|running_mean|running_var)"
_HEADS = {"classification_head": "cls", "regression_head": "box"}


def _fpn_level(prefix: str) -> Rule:
    # inner_blocks.{i} / layer_blocks.{i}: i = 0, 1, 2 are C3, C4, C5.
    kind = "lateral" if prefix == "inner_blocks" else "output"
    return Rule(
        rf"backbone\.fpn\.{prefix}\.([0-2])(?:\.0)?\.(weight|bias)",
        lambda m: f"fpn.{kind}{int(m.group(1)) + 3}.{m.group(2)}",
    )


def _tower(m: re.Match[str], legacy: bool) -> str:
    """head.X_head.conv.{2i}.w (legacy: Sequential of conv, ReLU) or conv.{i}.{0|1}.w -> our tower."""
    which = _HEADS[m.group(1)]
    if legacy:
        return f"head.{which}_tower.{int(m.group(2)) // 2}.conv.{m.group(3)}"
    part = "conv" if m.group(3) == "0" else "norm"
    return f"head.{which}_tower.{m.group(2)}.{part}.{m.group(4)}"


class TorchvisionImporter(Importer):
    name = "torchvision"
    title = "torchvision retinanet_resnet50_fpn[_v2]"
    default_p6 = "p5"  # LastLevelP6P7 uses P5 whenever its in and out widths are equal
    rules = (
        Rule(r"backbone\.body\.conv1\.weight", "backbone.stem.conv.conv.weight"),
        Rule(rf"backbone\.body\.bn1\.{_NORM}", r"backbone.stem.conv.norm.\1"),
        Rule(r"backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight", r"backbone.layer\1.\2.conv\3.conv.weight"),
        Rule(rf"backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.{_NORM}", r"backbone.layer\1.\2.conv\3.norm.\4"),
        Rule(r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight", r"backbone.layer\1.\2.downsample.conv.weight"),
        Rule(rf"backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.{_NORM}", r"backbone.layer\1.\2.downsample.norm.\3"),
        _fpn_level("inner_blocks"),
        _fpn_level("layer_blocks"),
        Rule(r"backbone\.fpn\.extra_blocks\.(p6|p7)\.(weight|bias)", r"fpn.\1.\2"),
        Rule(r"head\.(classification_head|regression_head)\.conv\.(\d*[02468])\.(weight|bias)",
             lambda m: _tower(m, legacy=True)),
        Rule(r"head\.(classification_head|regression_head)\.conv\.(\d+)\.([01])\.(weight|bias)",
             lambda m: _tower(m, legacy=False)),
        Rule(r"head\.classification_head\.cls_logits\.(weight|bias)", r"head.cls_pred.\1"),
        Rule(r"head\.regression_head\.bbox_reg\.(weight|bias)", r"head.box_pred.\1"),
    )
    ignores = (Ignore(r".*\.num_batches_tracked", "BatchNorm step counter"),)

    def base_spec(self, arch: Architecture) -> ModelSpec:
        # The GroupNorm head is what tells v2 from v1.
        spec = apply_architecture(torchvision_v2() if arch.head_norm == "gn" else torchvision_v1(), arch)
        spec.preprocess.resize_impl = "torch_bilinear_float"  # GeneralizedRCNNTransform: normalise, interpolate
        if arch.num_classes != 91 or arch.bn_step_counters:
            # torchvision forces FrozenBN eps to 0 only when it loads its own COCO_V1 weights; a
            # model fine-tuned to other classes (or trained with nn.BatchNorm2d) keeps eps 1e-5.
            spec.backbone.norm.eps = 1e-5
        if arch.num_classes != 91:  # channel k is label k, names unknown
            spec.postprocess.label_map = list(range(arch.num_classes))
            spec.postprocess.class_names = None
        return spec


IMPORTER = TorchvisionImporter()
