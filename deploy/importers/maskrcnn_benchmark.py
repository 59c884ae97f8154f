"""maskrcnn-benchmark RetinaNet (configs/retinanet/retinanet_R-50-FPN*): ``.pth`` holding
{"model": state_dict, "optimizer", "scheduler", "iteration"}, keys maybe prefixed "module.".

Keys (facts sheet section 3a): backbone.body.stem.{conv1,bn1}, layer{1..4}.{i}.conv{1,2,3} / bn{1,2,3}
/ downsample.{0,1} (stride in conv1, the 1x1), backbone.fpn.fpn_inner{2,3,4} / fpn_layer{2,3,4}
(2,3,4 are C3, C4, C5), top_blocks.p6 (from C5 with USE_C5, from P5 in the _P5 configs; the weight
shape tells) / p7, rpn.head.{cls,bbox}_tower.{0,2,4,6}, rpn.head.cls_logits / bbox_pred.

Conventions kept as the source has them: FrozenBN without eps, ratio-major legacy (+1) anchors,
box deltas in (10, 10, 5, 5) units with +1 decode, NMS 0.4 with +1 areas suppressing IoU >= t,
clip to [0, W-1] of the resized image, 100 detections, BGR 0-255 Caffe means, labels k + 1.
"""

from __future__ import annotations

import math

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
from retinanet_trt.spec.presets import CAFFE_MEAN_BGR, octave_sizes

_NORM = r"(weight|bias|running_mean|running_var)"


class MaskrcnnBenchmarkImporter(Importer):
    name = "maskrcnn_benchmark"
    title = "maskrcnn-benchmark RetinaNet"
    default_p6 = "p5"  # LastLevelP6P7 uses P5 whenever its in and out widths are equal
    rules = (
        Rule(r"backbone\.body\.stem\.conv1\.weight", "backbone.stem.conv.conv.weight"),
        Rule(rf"backbone\.body\.stem\.bn1\.{_NORM}", r"backbone.stem.conv.norm.\1"),
        Rule(r"backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight", r"backbone.layer\1.\2.conv\3.conv.weight"),
        Rule(rf"backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.{_NORM}", r"backbone.layer\1.\2.conv\3.norm.\4"),
        Rule(r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight", r"backbone.layer\1.\2.downsample.conv.weight"),
        Rule(rf"backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.{_NORM}", r"backbone.layer\1.\2.downsample.norm.\3"),
        # fpn_inner{2,3,4}: in_channels_list starts with a skipped C2 entry, so 2, 3, 4 are C3, C4, C5.
        Rule(r"backbone\.fpn\.fpn_inner([2-4])\.(weight|bias)", lambda m: f"fpn.lateral{int(m.group(1)) + 1}.{m.group(2)}"),
        Rule(r"backbone\.fpn\.fpn_layer([2-4])\.(weight|bias)", lambda m: f"fpn.output{int(m.group(1)) + 1}.{m.group(2)}"),
        Rule(r"backbone\.fpn\.top_blocks\.(p6|p7)\.(weight|bias)", r"fpn.\1.\2"),
        # Towers are Sequential(conv, ReLU, ...): conv n sits at index 2n.
        Rule(r"rpn\.head\.(cls|bbox)_tower\.(\d*[02468])\.(weight|bias)",
             lambda m: f"head.{'cls' if m.group(1) == 'cls' else 'box'}_tower.{int(m.group(2)) // 2}.conv.{m.group(3)}"),
        Rule(r"rpn\.head\.cls_logits\.(weight|bias)", r"head.cls_pred.\1"),
        Rule(r"rpn\.head\.bbox_pred\.(weight|bias)", r"head.box_pred.\1"),
    )
    ignores = (Ignore(r"rpn\.anchor_generator\.cell_anchors\.\d+", "anchors, regenerated from the spec"),)

    def base_spec(self, arch: Architecture) -> ModelSpec:
        spec = ModelSpec(
            name="maskrcnn_benchmark_retinanet",
            source=self.name,
            backbone=BackboneSpec(stride_in_1x1=True, norm=NormSpec("frozen_bn", 0.0)),  # FrozenBN: w * rsqrt(rv)
            fpn=FPNSpec(upsample="scale2"),
            head=HeadSpec(),
            anchors=AnchorSpec(
                sizes=[octave_sizes(s) for s in (32, 64, 128, 256, 512)], order="ratio_major", generator="legacy"
            ),
            box_coder=BoxCoderSpec(weights=[10.0, 10.0, 5.0, 5.0], scale_clamp=math.log(1000.0 / 16), plus_one=True),
            preprocess=PreprocessSpec(
                channel_order="BGR", scale=1.0, mean=list(CAFFE_MEAN_BGR), std=[1.0, 1.0, 1.0],
                min_size=800, max_size=1333, rounding="maskrcnn_benchmark",
                resize_impl="pillow_uint8",  # T.Resize on the PIL image, then ToTensor and Normalize
            ),
            postprocess=PostprocessSpec(
                score_thresh=[0.05] * 5, topk_per_level=1000, nms_iou=0.4, nms_rule="ge", nms_plus_one=True,
                max_detections=100, clip="resized_minus1", drop_empty=False,
            ),
        )
        apply_architecture(spec, arch)
        set_coco_labels(spec, first_label=1)
        return spec


IMPORTER = MaskrcnnBenchmarkImporter()
