"""Detectron (Caffe2) retinanet_R-50-FPN: a Python 2 pickle ``.pkl`` of {"blobs": {name: ndarray},
"cfg": yaml} (read with latin1), or the bare blob dict.

Blobs (facts sheet section 5a): conv1_w, res_conv1_bn_{s,b} (AffineChannel: scale and bias only),
res{2..5}_{i}_branch2{a,b,c}_w + _bn_{s,b} (stride in branch2a, the 1x1), branch1 (shortcut),
fpn_inner_res{5_2,4_5,3_3}_sum[_lateral]_{w,b} (laterals), fpn_res{...}_sum_{w,b} (outputs),
fpn_6 (from C5) / fpn_7, and the head only at level 3 -- retnet_{cls,bbox}_conv_n{0..3}_fpn3 and
retnet_{cls,bbox}_pred_fpn3 -- because levels 4..7 share those blobs (ConvShared). *_momentum
blobs are optimizer state.

Conventions kept as the source has them: octave-major legacy (+1) anchors with aspect ratios in
config order (1, 2, 0.5), i.e. our "size_major" order over [1, 2, 0.5]; +1 decode with unit
weights and clamp; score threshold 0.05 but 0.0 at P7; NMS 0.5 with +1 areas, IoU >= t; clip to
the original image's [0, W-1] after rescaling; 100 detections; BGR 0-255 Caffe means, pad to 128.
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
from retinanet_trt.spec.presets import CAFFE_MEAN_BGR

_BRANCH2 = {"a": 1, "b": 2, "c": 3}
_AFFINE = {"s": "weight", "b": "bias"}
_PARAM = {"w": "weight", "b": "bias"}


class DetectronImporter(Importer):
    name = "detectron"
    title = "Detectron (Caffe2) RetinaNet"
    rules = (
        Rule(r"conv1_w", "backbone.stem.conv.conv.weight"),
        Rule(r"res_conv1_bn_([sb])", lambda m: f"backbone.stem.conv.norm.{_AFFINE[m.group(1)]}"),
        Rule(r"res([2-5])_(\d+)_branch2([abc])_w",
             lambda m: f"backbone.layer{int(m.group(1)) - 1}.{m.group(2)}.conv{_BRANCH2[m.group(3)]}.conv.weight"),
        Rule(r"res([2-5])_(\d+)_branch2([abc])_bn_([sb])",
             lambda m: f"backbone.layer{int(m.group(1)) - 1}.{m.group(2)}.conv{_BRANCH2[m.group(3)]}.norm."
                       f"{_AFFINE[m.group(4)]}"),
        Rule(r"res([2-5])_(\d+)_branch1_w", lambda m: f"backbone.layer{int(m.group(1)) - 1}.{m.group(2)}.downsample.conv.weight"),
        Rule(r"res([2-5])_(\d+)_branch1_bn_([sb])",
             lambda m: f"backbone.layer{int(m.group(1)) - 1}.{m.group(2)}.downsample.norm.{_AFFINE[m.group(3)]}"),
        # The lateral of C5 is fpn_inner_res5_2_sum (no "_lateral"); C4's and C3's carry the suffix.
        Rule(r"fpn_inner_res([3-5])_\d+_sum(?:_lateral)?_([wb])", lambda m: f"fpn.lateral{m.group(1)}.{_PARAM[m.group(2)]}"),
        Rule(r"fpn_res([3-5])_\d+_sum_([wb])", lambda m: f"fpn.output{m.group(1)}.{_PARAM[m.group(2)]}"),
        Rule(r"fpn_([67])_([wb])", lambda m: f"fpn.p{m.group(1)}.{_PARAM[m.group(2)]}"),
        Rule(r"retnet_(cls|bbox)_conv_n(\d+)_fpn3_([wb])",
             lambda m: f"head.{'cls' if m.group(1) == 'cls' else 'box'}_tower.{m.group(2)}.conv.{_PARAM[m.group(3)]}"),
        Rule(r"retnet_(cls|bbox)_pred_fpn3_([wb])",
             lambda m: f"head.{'cls' if m.group(1) == 'cls' else 'box'}_pred.{_PARAM[m.group(2)]}"),
    )
    ignores = (Ignore(r".+_momentum", "SGD momentum (optimizer state)"),)

    def base_spec(self, arch: Architecture) -> ModelSpec:
        spec = ModelSpec(
            name="detectron_retinanet",
            source=self.name,
            backbone=BackboneSpec(stride_in_1x1=True, norm=NormSpec("affine", 0.0)),
            fpn=FPNSpec(upsample="scale2"),
            head=HeadSpec(),
            anchors=AnchorSpec(
                # size = stride * 4 * 2^(octave/3); octave outer, aspect ratio inner in config order.
                sizes=[[4.0 * 2**lv * 2 ** (o / 3) for o in range(3)] for lv in range(3, 8)],
                aspect_ratios=[1.0, 2.0, 0.5],
                order="size_major",
                generator="legacy",
            ),
            box_coder=BoxCoderSpec(weights=[1.0, 1.0, 1.0, 1.0], scale_clamp=math.log(1000.0 / 16), plus_one=True),
            preprocess=PreprocessSpec(
                channel_order="BGR", scale=1.0, mean=list(CAFFE_MEAN_BGR), std=[1.0, 1.0, 1.0],
                min_size=800, max_size=1333, rounding="detectron", size_divisibility=128,
                resize_impl="cv2_float",  # prep_im_for_blob: subtract the means, then cv2.resize(fx=fy=im_scale)
            ),
            postprocess=PostprocessSpec(
                score_thresh=[0.05, 0.05, 0.05, 0.05, 0.0], topk_per_level=1000, nms_iou=0.5, nms_rule="ge",
                nms_plus_one=True, max_detections=100, clip="original_minus1", drop_empty=False, rescale="uniform",
            ),
        )
        apply_architecture(spec, arch)
        set_coco_labels(spec, first_label=1)
        return spec


IMPORTER = DetectronImporter()
