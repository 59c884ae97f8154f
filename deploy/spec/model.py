"""The model spec: one JSON-serialisable object that drives construction, pre- and post-processing.

A spec travels inside every artifact (ONNX ``metadata_props["retinanet_trt.spec"]`` and the engine
sidecar), so a runner needs only the file. Every field has a default that matches detectron2's
RetinaNet R50-FPN; presets and importers override what their framework does differently
(see ../shared/facts/checkpoint-formats.md for the per-framework conventions).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from retinanet_trt.errors import UsageError
from retinanet_trt.spec.checks import check_field_type, range_problems

SPEC_VERSION = 1
OVERSIZE_RULES = ("shrink", "refuse")
RESIZE_IMPLS = ("pillow_uint8", "torch_bilinear_float", "skimage_float", "cv2_float", "cv2_uint8")
STEM_POOLS = ("pytorch", "caffe_ceil", "caffe_ceil_p1")
FPN_UPSAMPLES = ("scale2", "size", "deconv")
SCORE_KINDS = ("probability", "logit")


@dataclass
class NormSpec:
    """Backbone normalisation, always folded into the conv before export.

    kind: "frozen_bn" (weight, bias, running_mean, running_var, eps) or "affine" (Detectron's
    AffineChannel: weight and bias only). eps is 1e-5 (detectron2, eval BN), 0.0 (torchvision v1
    FrozenBN, maskrcnn-benchmark's "no eps").
    """

    kind: str = "frozen_bn"
    eps: float = 1e-5


@dataclass
class BackboneSpec:
    """ResNet returning C3..C5.

    stem_pool: "pytorch" k3 s2 p1 floor; "caffe_ceil" k3 s2 p0 ceil_mode=True; "caffe_ceil_p1" k3 s2
    p1 ceil_mode=True (a PyTorch pool translated to Caffe as it stands). padding: "pytorch"
    (symmetric k//2) or "tf_same" (MindSpore's pad_mode 'same', TensorFlow SAME_UPPER: total pad
    max((ceil(in/s) - 1) * s + k - in, 0), the odd pixel right/bottom) on every stride-2 conv, on the
    stem max-pool (padding acts as -inf there; the pool spec is then ignored) and on the FPN's P6/P7.
    relu_before_add: ReLU on the residual branch (after the last norm) and on the projection
    shortcut before the add, and again after it (MindSpore's Conv2dBnAct(activation='relu')).
    """

    depth: int = 50  # 18, 34 (basic blocks), 50, 101, 152 (bottleneck)
    stride_in_1x1: bool = True  # MSRA/Caffe weights put the stride in the 1x1 conv; torchvision in the 3x3
    norm: NormSpec = field(default_factory=NormSpec)
    stem_pool: str = "pytorch"
    padding: str = "pytorch"
    relu_before_add: bool = False
    stem_channels: int = 64
    width_per_group: int = 64  # base width; `tiny` shrinks it for fast tests


@dataclass
class FPNSpec:
    out_channels: int = 256
    # "scale2": nearest x2; "size": nearest to the lateral's size (torchvision, MindSpore's fixed-size
    # ResizeNearestNeighbor); "deconv": a stored per-level ConvTranspose k4 s2 p1 with group = channels
    # (the Caffe port's bilinear-filler Deconvolution), which zero-pads at the borders.
    upsample: str = "scale2"
    p6_from: str = "c5"  # "c5" or "p5"
    levels: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7])
    bias: bool = True  # MindSpore's nn.Conv2d has no bias (has_bias=False)
    # "deconv" only: the ConvTranspose's groups. 0 = one per channel (a per-channel filler); 1 = a
    # full C x C kernel (a Caffe Deconvolution without `group`: each output sums every input channel).
    deconv_groups: int = 0
    # True: the head reads relu(P6), as a Caffe port computes whose in-place ReLU on P6 (for P7) runs
    # before the head's P6 layers; maskrcnn-benchmark and torchvision feed the head P6 unactivated.
    head_reads_relu_p6: bool = False


@dataclass
class HeadSpec:
    num_convs: int = 4
    channels: int = 256
    num_anchors: int = 9
    num_classes: int = 80
    norm: str = "none"  # "none" or "gn" (torchvision v2: conv without bias + GroupNorm(32) + ReLU)
    gn_groups: int = 32
    prior_prob: float = 0.01
    shared: bool = True  # False: one tower and predictor per FPN level (MindSpore's MultiBox)
    bias: bool = True  # MindSpore's head convs have no bias


@dataclass
class AnchorSpec:
    """Anchors per level, in the source framework's own order and rounding.

    sizes[l] are the anchor sizes of level ``levels[l]``; aspect_ratios are h/w.
    order: "ratio_major" (a = r*S + s: torchvision, maskrcnn-benchmark, yhenon) or
           "size_major" (a = s*R + r: detectron2, Detectron).
    generator: "torchvision" (corners rounded half-to-even, centre offset 0, stride = image // feature),
               "detectron2" (float corners, offset 0), "legacy" (maskrcnn-benchmark / Detectron +1
               anchors centred at (stride-1)/2), "yhenon" (centre (x+0.5)*stride, float).
    """

    sizes: list[list[float]] = field(
        default_factory=lambda: [[s, s * 2 ** (1 / 3), s * 2 ** (2 / 3)] for s in (32, 64, 128, 256, 512)]
    )
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    order: str = "size_major"
    generator: str = "detectron2"


@dataclass
class BoxCoderSpec:
    weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    scale_clamp: float | None = math.log(1000.0 / 16)  # upper clamp of dw/dh; None: no clamp (yhenon)
    plus_one: bool = False  # legacy +1 widths and x2 = cx + w/2 - 1 (maskrcnn-benchmark, Detectron)


@dataclass
class PreprocessSpec:
    """How an image becomes the network input (N, 3, H, W) float32.

    resize: "shortest_edge" (short side -> min_size, long side <= max_size, keep ratio), "fixed"
    (stretch to fixed_size [H, W]) or "none". rounding: "floor" (torchvision), "round_half_up"
    (detectron2: int(x + 0.5)), "round" (yhenon: Python round), "detectron" (im_scale capped when
    round(im_scale * long) > max_size, sides rounded as cv2), "maskrcnn_benchmark" (short side
    int(round(...)) when capped, long side truncated); see runtime.resize_plan.resized_hw. scale:
    pixel values are multiplied by this before mean/std (1/255 for 0-1 inputs, 1.0 for 0-255).

    resize_impl: whose arithmetic resizes, and with it whether normalisation comes first
    (runtime/resize.py reproduces each exactly):
      pillow_uint8          Pillow on the 8-bit image, then normalise (detectron2, maskrcnn-benchmark,
                            tiny; the default, and what artifacts written before the field meant)
      torch_bilinear_float  normalise in float32, then PyTorch's CPU bilinear interpolate
                            (align_corners=False, no antialias): torchvision's GeneralizedRCNNTransform
      skimage_float         /255 in float32, normalise in float64, then skimage.transform.resize with
                            its defaults (order 1, reflect, Gaussian anti-aliasing when shrinking): yhenon
      cv2_float             normalise in float32, then cv2.resize INTER_LINEAR with fx = fy = the
                            resize factor: Detectron's blob.prep_im_for_blob
      cv2_uint8             cv2.resize INTER_LINEAR on the 8-bit image, then normalise: MindSpore's
                            RetinaNet eval (Decode, cv2.resize to a fixed size, Normalize)
    The float impls resize bilinearly only (interpolation "bilinear").

    oversize: what a fixed network input does with an image whose resize above does not fit it.
    The framework's resize is kept for every image that fits; one that does not is "shrink": scaled
    down further, aspect kept, to fit (reported per image: not exact to the framework), or "refuse":
    skipped with the reason.
    """

    channel_order: str = "BGR"
    scale: float = 1.0
    mean: list[float] = field(default_factory=lambda: [103.530, 116.280, 123.675])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    resize: str = "shortest_edge"
    min_size: int = 800
    max_size: int = 1333
    fixed_size: list[int] | None = None
    rounding: str = "round_half_up"
    interpolation: str = "bilinear"
    size_divisibility: int = 32
    pad_extra_when_divisible: bool = False  # yhenon pads +32 even when already divisible
    resize_impl: str = "pillow_uint8"
    oversize: str = "shrink"


@dataclass
class PostprocessSpec:
    """Decode -> top-k -> NMS -> max detections, with each framework's exact conventions.

    score_thresh: one value per level (Detectron uses 0.0 at P7); compared as score > thresh, where
          the score is the sigmoid probability or, with score_thresh_on "logit", the raw logit
          (MindSpore: logit > 0.1). reported_scores: "probability" or "logit" (MindSpore reports logits).
    max_per_class: at most this many detections per class (MindSpore's max_boxes 100), before the
          overall cap max_detections; None: no per-class cap.
    nms_rule: "gt" (IoU > t suppresses; torchvision) or "ge" (IoU >= t; maskrcnn-benchmark, Detectron).
    clip: "resized" ([0,W]x[0,H] of the unpadded resized image, per level: torchvision),
          "resized_minus1" ([0,W-1]: maskrcnn-benchmark), "original" (after rescale, [0,W]: detectron2),
          "original_minus1" (Detectron), "padded_lower" (yhenon: x1,y1 >= 0 and x2,y2 <= the padded input),
          "resized_to_original" (MindSpore: [0,W]x[0,H] of the resized image, then rescaled, NMS in original
          pixels), "none".
    label_map: channel -> output label id (COCO category ids); class_names: channel -> name.
    rescale: back to original pixels "per_axis" (x by W_orig/W_resized, y by H: torchvision,
          detectron2, maskrcnn-benchmark) or "uniform" (divide by the one resize factor the
          pre-process used for both sides: Detectron's im_scale, yhenon's scale).
    """

    score_thresh: list[float] = field(default_factory=lambda: [0.05] * 5)
    topk_per_level: int | None = 1000
    nms_iou: float = 0.5
    nms_rule: str = "gt"
    nms_plus_one: bool = False
    max_detections: int | None = 100
    clip: str = "original"
    drop_empty: bool = True
    label_map: list[int] | None = None
    class_names: list[str] | None = None
    rescale: str = "per_axis"
    max_per_class: int | None = None
    score_thresh_on: str = "probability"
    reported_scores: str = "probability"


@dataclass
class ModelSpec:
    name: str = "retinanet_r50_fpn"
    source: str = "retinanet_trt"
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    fpn: FPNSpec = field(default_factory=FPNSpec)
    head: HeadSpec = field(default_factory=HeadSpec)
    anchors: AnchorSpec = field(default_factory=AnchorSpec)
    box_coder: BoxCoderSpec = field(default_factory=BoxCoderSpec)
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    postprocess: PostprocessSpec = field(default_factory=PostprocessSpec)
    version: int = SPEC_VERSION

    # ------------------------------------------------------------------ derived facts
    @property
    def levels(self) -> list[int]:
        return list(self.fpn.levels)

    @property
    def max_stride(self) -> int:
        return 2 ** max(self.fpn.levels)

    def class_names(self) -> list[str]:
        names = self.postprocess.class_names
        return list(names) if names else [f"class_{k}" for k in range(self.head.num_classes)]

    def label_ids(self) -> list[int]:
        ids = self.postprocess.label_map
        return list(ids) if ids else list(range(self.head.num_classes))

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        spec = _from_dict(cls, data, "spec")
        spec.validate()
        return spec

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise UsageError(f"spec is not valid JSON ({type(exc).__name__}: {str(exc)[:80]}); "
                             "pass a file written by `trt-inspect --spec-json`") from None
        if not isinstance(data, dict):
            raise UsageError("spec JSON must be an object with backbone/fpn/head/... fields")
        return cls.from_dict(data)

    def validate(self) -> None:
        """Raise UsageError naming the first inconsistency, so no model is built from a bad spec."""
        b, f, h, a = self.backbone, self.fpn, self.head, self.anchors
        problems: list[str] = []
        if b.depth not in (18, 34, 50, 101, 152):
            problems.append(f"backbone.depth={b.depth} (use 18, 34, 50, 101 or 152)")
        if b.norm.kind not in ("frozen_bn", "affine"):
            problems.append(f"backbone.norm.kind={b.norm.kind!r} (use 'frozen_bn' or 'affine')")
        if b.norm.eps < 0:
            problems.append(f"backbone.norm.eps={b.norm.eps} must be >= 0")
        if b.stem_pool not in STEM_POOLS:
            problems.append(f"backbone.stem_pool={b.stem_pool!r} (use {', '.join(STEM_POOLS)})")
        if b.padding not in ("pytorch", "tf_same"):
            problems.append(f"backbone.padding={b.padding!r} (use 'pytorch' or 'tf_same')")
        if f.upsample not in FPN_UPSAMPLES:
            problems.append(f"fpn.upsample={f.upsample!r} (use {', '.join(FPN_UPSAMPLES)})")
        if f.p6_from not in ("c5", "p5"):
            problems.append(f"fpn.p6_from={f.p6_from!r} (use 'c5' or 'p5')")
        if f.deconv_groups < 0 or (f.deconv_groups and f.out_channels % f.deconv_groups):
            problems.append(f"fpn.deconv_groups={f.deconv_groups} must be 0 (one per channel) or divide "
                            f"fpn.out_channels={f.out_channels}")
        if not f.levels or f.levels != list(range(3, 3 + len(f.levels))) or max(f.levels) > 7:
            problems.append(f"fpn.levels={f.levels} must be consecutive from 3, at most 7 (e.g. [3,4,5,6,7])")
        if f.out_channels <= 0 or h.channels <= 0 or h.num_classes <= 0 or h.num_anchors <= 0:
            problems.append("channel, class and anchor counts must be positive")
        if h.norm not in ("none", "gn"):
            problems.append(f"head.norm={h.norm!r} (use 'none' or 'gn')")
        if h.norm == "gn" and h.channels % h.gn_groups:
            problems.append(f"head.channels={h.channels} is not divisible by gn_groups={h.gn_groups}")
        if a.order not in ("ratio_major", "size_major"):
            problems.append(f"anchors.order={a.order!r} (use 'ratio_major' or 'size_major')")
        if a.generator not in ("torchvision", "detectron2", "legacy", "yhenon"):
            problems.append(f"anchors.generator={a.generator!r} (torchvision, detectron2, legacy or yhenon)")
        n_levels = len(f.levels)
        if len(a.sizes) != n_levels or len(a.strides) != n_levels:
            problems.append(f"anchors.sizes/strides need one entry per level ({n_levels})")
        elif any(len(s) * len(a.aspect_ratios) != h.num_anchors for s in a.sizes):
            problems.append(
                f"anchors per location (sizes x aspect_ratios) must equal head.num_anchors={h.num_anchors}"
            )
        if len(self.postprocess.score_thresh) != n_levels:
            problems.append(f"postprocess.score_thresh needs one value per level ({n_levels})")
        p = self.postprocess
        if p.nms_rule not in ("gt", "ge"):
            problems.append(f"postprocess.nms_rule={p.nms_rule!r} (use 'gt' or 'ge')")
        if p.clip not in ("resized", "resized_minus1", "resized_to_original", "original", "original_minus1",
                          "padded_lower", "none"):
            problems.append(f"postprocess.clip={p.clip!r} is unknown")
        if p.rescale not in ("per_axis", "uniform"):
            problems.append(f"postprocess.rescale={p.rescale!r} (use 'per_axis' or 'uniform')")
        for name in ("score_thresh_on", "reported_scores"):
            if getattr(p, name) not in SCORE_KINDS:
                problems.append(f"postprocess.{name}={getattr(p, name)!r} (use 'probability' or 'logit')")
        if p.reported_scores == "logit" and p.score_thresh_on != "logit":
            problems.append("postprocess.reported_scores='logit' needs score_thresh_on='logit' (the logits are the scores)")
        if p.label_map is not None and len(p.label_map) != h.num_classes:
            problems.append(f"postprocess.label_map has {len(p.label_map)} entries, head has {h.num_classes} classes")
        if p.class_names is not None and len(p.class_names) != h.num_classes:
            problems.append(f"postprocess.class_names has {len(p.class_names)} entries, head has {h.num_classes} classes")
        pre = self.preprocess
        if pre.channel_order not in ("RGB", "BGR"):
            problems.append(f"preprocess.channel_order={pre.channel_order!r} (use 'RGB' or 'BGR')")
        if len(pre.mean) != 3 or len(pre.std) != 3 or any(s == 0 for s in pre.std):
            problems.append("preprocess.mean and std need 3 values each, std non-zero")
        if pre.resize not in ("shortest_edge", "fixed", "none"):
            problems.append(f"preprocess.resize={pre.resize!r} (use 'shortest_edge', 'fixed' or 'none')")
        if pre.resize == "fixed" and not pre.fixed_size:
            problems.append("preprocess.resize='fixed' needs preprocess.fixed_size [H, W]")
        if pre.rounding not in ("floor", "round_half_up", "round", "detectron", "maskrcnn_benchmark"):
            problems.append(
                f"preprocess.rounding={pre.rounding!r} (floor, round_half_up, round, detectron or maskrcnn_benchmark)"
            )
        if pre.oversize not in OVERSIZE_RULES:
            problems.append(f"preprocess.oversize={pre.oversize!r} (use {', '.join(OVERSIZE_RULES)})")
        if pre.resize_impl not in RESIZE_IMPLS:
            problems.append(f"preprocess.resize_impl={pre.resize_impl!r} (use {', '.join(RESIZE_IMPLS)})")
        elif pre.resize_impl != "pillow_uint8" and pre.interpolation != "bilinear":
            problems.append(f"preprocess.resize_impl={pre.resize_impl!r} resizes bilinearly only, "
                            f"not interpolation={pre.interpolation!r}")
        elif pre.resize_impl == "cv2_float" and pre.resize == "shortest_edge" and pre.rounding not in (
            "round", "detectron"
        ):
            # cv2.resize(fx=fy=scale) makes each side round(side * scale); other rules disagree with it.
            problems.append(f"preprocess.resize_impl='cv2_float' sizes sides as round(side * scale): "
                            f"rounding={pre.rounding!r} needs 'detectron' or 'round'")
        if p.rescale == "uniform" and pre.resize == "shortest_edge" and pre.rounding in (
            "round_half_up", "maskrcnn_benchmark"
        ):
            problems.append(f"postprocess.rescale='uniform' needs one resize factor; rounding={pre.rounding!r} has none")
        if self.version != SPEC_VERSION:
            problems.append(f"version={self.version!r}: this release reads spec version {SPEC_VERSION}")
        problems += range_problems(self)
        if problems:
            more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:4])})" if len(problems) > 1 else ""
            raise UsageError(f"inconsistent spec: {problems[0]}{more}")


def _from_dict(cls: type, data: Any, where: str) -> Any:
    """Build a (nested) dataclass from a dict, refusing unknown keys so typos are caught."""
    if not isinstance(data, dict):
        raise UsageError(f"{where} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UsageError(f"unknown field(s) in {where}: {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        ftype = fields[name].type
        sub = _NESTED.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        kwargs[name] = _from_dict(sub, value, f"{where}.{name}") if sub else check_field_type(cls, name, value, where)
    return cls(**kwargs)


_NESTED: dict[str, type] = {
    "NormSpec": NormSpec,
    "BackboneSpec": BackboneSpec,
    "FPNSpec": FPNSpec,
    "HeadSpec": HeadSpec,
    "AnchorSpec": AnchorSpec,
    "BoxCoderSpec": BoxCoderSpec,
    "PreprocessSpec": PreprocessSpec,
    "PostprocessSpec": PostprocessSpec,
}
