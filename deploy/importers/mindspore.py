"""MindSpore model-zoo RetinaNet (official/cv/RetinaNet R50 at 600x600; research/cv/retinanet_resnet101
and retinanet_resnet152, the latter at 640x640): a ``.ckpt`` or ``.safetensors`` (importers.mindspore_ckpt).

Names (facts sheet mindspore-caffe.md A2), prefixed "network." by the train/eval wrappers, with the
FPN (and the backbone inside it) nested under "fpn." in the research R101/R152 code:
  backbone.conv1.features.{0: conv, 1: BN}; backbone.layer{1..4}.{i}.conv{1,2}.features.{0,1} (ConvBNReLU),
  .conv3.{conv,batchnorm} and .down_sample_layer.{conv,batchnorm} (Conv2dBnAct with ReLU); BN as
  gamma/beta/moving_mean/moving_variance; P{3,4,5}_1 laterals, P{3,4,5}_2 outputs, P6_0 (from C5), P7_2;
  multi_box.multi_{cls,loc}_layers.{level}.{0,2,4,6: tower, 8: predictor}. No conv has a bias.

Converted here: the class predictor's background row 0 of each anchor block is dropped (81 -> 80;
the sigmoid is per channel, so this is exact) and the box rows (dy, dx, dh, dw) are permuted to our
(dx, dy, dw, dh); prior_scaling (0.1, 0.2) is box_coder weights (10, 10, 5, 5).
Conventions kept as the source has them: TF 'same' padding, ReLU before the residual add, one head
per level, anchors centred at (x + 0.5) * stride with w/h ratios (0.5, 1, 2) (h/w 2, 1, 0.5),
ratio-major; no clamp; logit > 0.1, logits reported, greedy NMS with +1 areas keeping IoU <= 0.6
on boxes clipped to the resized frame and scaled to the image, at most 100 per class, no overall
cap; RGB cv2.resize stretch of the uint8 image, then ImageNet mean/std x 255. Training files also
hold optimizer state (moments.*, learning_rate, global_step, ...), which is ignored.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.importers.common import (
    Architecture,
    Ignore,
    Importer,
    ImportResult,
    Rule,
    apply_architecture,
    set_coco_labels,
)
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

NAME = "mindspore"
_PRE = r"(?:network\.)?(?:fpn\.)?"  # the wrappers' prefix; research R101/R152 nest the FPN as fpn.
_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_BN_RE = "(gamma|beta|moving_mean|moving_variance)"
_LATERAL = {"1": "lateral", "2": "output"}
_HEADS = {"cls": "cls", "loc": "box"}
# multi_box towers are SequentialCell([conv, ReLU] x 4, conv): convs at 0, 2, 4, 6, the predictor at 8.
_PRED_INDEX = 8
# The box rows of one anchor are (dy, dx, dh, dw); ours are (dx, dy, dw, dh).
_BOX_ORDER = np.array([1, 0, 3, 2])


def _block(m: re.Match[str]) -> str:
    part = {"conv1": "conv1", "conv2": "conv2", "conv3": "conv3", "down_sample_layer": "downsample"}[m.group(3)]
    return f"backbone.layer{m.group(1)}.{m.group(2)}.{part}"


def _head(m: re.Match[str]) -> str:
    index = int(m.group(3))
    part = f"{_HEADS[m.group(1)]}_pred" if index == _PRED_INDEX else f"{_HEADS[m.group(1)]}_tower.{index // 2}.conv"
    return f"head.{m.group(2)}.{part}.{m.group(4)}"


class MindSporeImporter(Importer):
    name = NAME
    title = "MindSpore model-zoo RetinaNet"
    rules = (
        Rule(_PRE + r"backbone\.conv1\.features\.0\.weight", "backbone.stem.conv.conv.weight"),
        Rule(_PRE + rf"backbone\.conv1\.features\.1\.{_BN_RE}", lambda m: f"backbone.stem.conv.norm.{_BN[m.group(1)]}"),
        Rule(_PRE + r"backbone\.layer(\d)\.(\d+)\.(conv[12])\.features\.0\.weight", lambda m: f"{_block(m)}.conv.weight"),
        Rule(_PRE + rf"backbone\.layer(\d)\.(\d+)\.(conv[12])\.features\.1\.{_BN_RE}",
             lambda m: f"{_block(m)}.norm.{_BN[m.group(4)]}"),
        Rule(_PRE + r"backbone\.layer(\d)\.(\d+)\.(conv3|down_sample_layer)\.conv\.weight", lambda m: f"{_block(m)}.conv.weight"),
        Rule(_PRE + rf"backbone\.layer(\d)\.(\d+)\.(conv3|down_sample_layer)\.batchnorm\.{_BN_RE}",
             lambda m: f"{_block(m)}.norm.{_BN[m.group(4)]}"),
        Rule(_PRE + r"P([3-5])_([12])\.(weight|bias)", lambda m: f"fpn.{_LATERAL[m.group(2)]}{m.group(1)}.{m.group(3)}"),
        Rule(_PRE + r"P6_0\.(weight|bias)", r"fpn.p6.\1"),
        Rule(_PRE + r"P7_2\.(weight|bias)", r"fpn.p7.\1"),  # P7_1 is the ReLU
        Rule(r"(?:network\.)?multi_box\.multi_(cls|loc)_layers\.(\d+)\.([02468])\.(weight|bias)", _head),
    )
    ignores = (
        Ignore(r"(?:moments|accum|moment1|moment2|mean_grad|mean_square|adam_m|adam_v)\..+", "optimizer state"),
        Ignore(r"(?:learning_rate|global_step|momentum|beta1_power|beta2_power|scale_sense|epoch_num|step_num"
               r"|current_iterator_step|last_overflow_iterator_step|random_op)", "training counter or optimizer value"),
    )

    def base_spec(self, arch: Architecture) -> ModelSpec:
        side = 640 if arch.depth == 152 else 600  # research/cv/retinanet_resnet152 trains and evaluates at 640
        spec = ModelSpec(
            name="mindspore_retinanet",
            source=self.name,
            backbone=BackboneSpec(stride_in_1x1=False, norm=NormSpec("frozen_bn", 1e-5), padding="tf_same",
                                  relu_before_add=True),
            # ResizeNearestNeighbor to the next level's fixed feature size = the lateral's size.
            fpn=FPNSpec(upsample="size", p6_from="c5"),
            head=HeadSpec(),
            anchors=AnchorSpec(
                sizes=[octave_sizes(s) for s in (32, 64, 128, 256, 512)], aspect_ratios=[2.0, 1.0, 0.5],
                order="ratio_major", generator="yhenon",
            ),
            box_coder=BoxCoderSpec(weights=[10.0, 10.0, 5.0, 5.0], scale_clamp=None, plus_one=False),
            preprocess=PreprocessSpec(
                channel_order="RGB", scale=1.0, mean=[m * 255 for m in IMAGENET_MEAN],
                std=[s * 255 for s in IMAGENET_STD], resize="fixed", fixed_size=[side, side], size_divisibility=1,
                resize_impl="cv2_uint8",
            ),
            postprocess=PostprocessSpec(
                score_thresh=[0.1] * 5, score_thresh_on="logit", reported_scores="logit", topk_per_level=None,
                nms_iou=0.6, nms_rule="gt", nms_plus_one=True, max_detections=None, max_per_class=100,
                clip="resized_to_original", drop_empty=False,
            ),
        )
        apply_architecture(spec, arch)
        set_coco_labels(spec, first_label=1)
        return spec

    def convert(self, tensors: dict[str, Any], notes: list[str]) -> ImportResult:
        """Drop the background class rows and reorder the box rows, then rename and check as usual."""
        tensors = dict(tensors)
        loc_rows = {m.group(1): v.shape[0] for k, v in tensors.items()
                    if (m := re.fullmatch(rf".*multi_loc_layers\.(\d+)\.{_PRED_INDEX}\.weight", k)) and hasattr(v, "shape")}
        for key, value in list(tensors.items()):
            m = re.fullmatch(rf".*multi_(cls|loc)_layers\.(\d+)\.{_PRED_INDEX}\.(weight|bias)", key)
            if m is None or not hasattr(value, "shape") or m.group(2) not in loc_rows or loc_rows[m.group(2)] % 4:
                continue  # the fit check names what is missing or malformed
            anchors = loc_rows[m.group(2)] // 4
            rows = np.asarray(value).reshape(anchors, -1, *value.shape[1:])
            if m.group(1) == "loc":
                tensors[key] = rows[:, _BOX_ORDER].reshape(value.shape)
            elif rows.shape[1] < 2:
                raise UsageError(f"{key}: {value.shape[0]} rows for {anchors} anchors leave no class besides background")
            else:
                tensors[key] = rows[:, 1:].reshape(-1, *value.shape[1:])
        if loc_rows:
            notes.append("dropped the background row of every anchor block of the class predictors and reordered "
                         "the box rows (dy, dx, dh, dw) -> (dx, dy, dw, dh)")
        result = super().convert(tensors, notes)
        if result.spec.backbone.depth in (101, 152):
            notes.append("research/cv/retinanet_resnet101/152 evaluate with their own soft-NMS variant; the "
                         "spec uses official/cv/RetinaNet's greedy NMS (IoU > 0.6 suppresses, 100 per class)")
        return result


IMPORTER = MindSporeImporter()
