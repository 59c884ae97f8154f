"""Type and range checks for every spec field, wherever the spec comes from (a --spec file, an
ONNX file's metadata, an engine sidecar, a preset or an importer).

Types are read from the dataclass annotations, so a new field is checked without code here;
ranges are listed per field below. Both report the field's dotted path and the value.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Union

from retinanet_trt.errors import UsageError

_NAMES = {int: "integer", float: "number", str: "string", bool: "true/false"}


def _type_name(tp: Any, plural: bool = False) -> str:
    """'an integer', 'a list of numbers', 'a list of lists of numbers', 'a string or null'."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a, plural) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"{'lists' if plural else 'a list'} of {_type_name(item, plural=True)}"
    if tp is type(None):
        return "null"
    name = _NAMES.get(tp, getattr(tp, "__name__", str(tp)))
    if plural:
        return name if name == "true/false" else f"{name}s"
    return name if name == "true/false" else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:  # JSON has one number type: 1 is a fine float; NaN and infinity are not
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    return True  # nested dataclasses are checked field by field by the caller


def check_field_type(cls: type, name: str, value: Any, where: str) -> Any:
    """The value for field `name` of dataclass `cls` (ints widened to float where a float is
    declared); UsageError naming `where.name` when its JSON type is wrong."""
    tp = typing.get_type_hints(cls)[name]
    if not _matches(value, tp):
        raise UsageError(f"spec field {where}.{name} = {value!r}: must be {_type_name(tp)}; fix the spec JSON")
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def range_problems(spec: Any) -> list[str]:
    """Every field whose value is outside what the model, anchors and post-process can use."""
    b, f, h, a, c = spec.backbone, spec.fpn, spec.head, spec.anchors, spec.box_coder
    pre, post = spec.preprocess, spec.postprocess
    checks: list[tuple[str, Any, bool, str]] = [
        ("backbone.stem_channels", b.stem_channels, b.stem_channels >= 1, ">= 1"),
        ("backbone.width_per_group", b.width_per_group, b.width_per_group >= 1, ">= 1"),
        ("fpn.out_channels", f.out_channels, f.out_channels >= 1, ">= 1"),
        ("head.num_convs", h.num_convs, 0 <= h.num_convs <= 16, "between 0 and 16"),
        ("head.channels", h.channels, h.channels >= 1, ">= 1"),
        ("head.num_classes", h.num_classes, 1 <= h.num_classes <= 100000, "between 1 and 100000"),
        ("head.num_anchors", h.num_anchors, h.num_anchors >= 1, ">= 1"),
        ("head.gn_groups", h.gn_groups, h.gn_groups >= 1, ">= 1"),
        ("head.prior_prob", h.prior_prob, 0.0 < h.prior_prob < 1.0, "strictly between 0 and 1"),
        ("anchors.sizes", a.sizes, all(s > 0 for row in a.sizes for s in row), "all > 0"),
        ("anchors.aspect_ratios", a.aspect_ratios, bool(a.aspect_ratios) and all(r > 0 for r in a.aspect_ratios),
         "non-empty, all > 0"),
        ("anchors.strides", a.strides, all(s >= 1 for s in a.strides), "all >= 1"),
        ("box_coder.weights", c.weights, len(c.weights) == 4 and all(w > 0 for w in c.weights), "4 values, all > 0"),
        ("box_coder.scale_clamp", c.scale_clamp, c.scale_clamp is None or c.scale_clamp > 0, "> 0 or null"),
        ("preprocess.scale", pre.scale, pre.scale > 0, "> 0"),
        ("preprocess.min_size", pre.min_size, 1 <= pre.min_size <= 8192, "between 1 and 8192"),
        ("preprocess.max_size", pre.max_size, pre.min_size <= pre.max_size <= 8192, "between min_size and 8192"),
        ("preprocess.size_divisibility", pre.size_divisibility, 1 <= pre.size_divisibility <= 1024, "between 1 and 1024"),
        ("preprocess.fixed_size", pre.fixed_size, pre.fixed_size is None or (
            len(pre.fixed_size) == 2 and all(1 <= s <= 8192 for s in pre.fixed_size)), "[H, W] between 1 and 8192"),
        ("postprocess.score_thresh", post.score_thresh, post.score_thresh_on == "logit" or all(
            0.0 <= t < 1.0 for t in post.score_thresh), "in [0, 1) (any number with score_thresh_on 'logit')"),
        ("postprocess.topk_per_level", post.topk_per_level, post.topk_per_level is None or post.topk_per_level >= 1,
         ">= 1 or null"),
        ("postprocess.nms_iou", post.nms_iou, 0.0 < post.nms_iou <= 1.0, "in (0, 1]"),
        ("postprocess.max_detections", post.max_detections, post.max_detections is None or post.max_detections >= 1,
         ">= 1 or null"),
        ("postprocess.max_per_class", post.max_per_class, post.max_per_class is None or post.max_per_class >= 1,
         ">= 1 or null"),
    ]
    return [f"{name}={value!r} must be {rule}" for name, value, ok, rule in checks if not ok]
