"""What every importer shares: key-renaming rules, architecture inference from tensor shapes, the
strict fit check against our model, and the ImportResult handed to export.

An importer is a list of rename rules (regex on the source key -> our key), a list of keys it
knows to ignore (with the reason), and a function that turns the inferred architecture into a
spec carrying the framework's own anchors, box coder and pre/post-processing conventions.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.spec import ModelSpec
from retinanet_trt.spec.coco import COCO_IDS, COCO_NAMES

if TYPE_CHECKING:  # torch is imported where tensors are made, so `--help` and SOURCES cost no torch import
    import torch

    from retinanet_trt.model.retinanet import RetinaNet

Target = str | Callable[[re.Match[str]], str]


@dataclass(frozen=True)
class Rule:
    """Rename a source key that fully matches `pattern` to `target` (a re template or a function)."""

    pattern: str
    target: Target

    def apply(self, key: str) -> str | None:
        m = re.fullmatch(self.pattern, key)
        if m is None:
            return None
        return self.target(m) if callable(self.target) else m.expand(self.target)


@dataclass(frozen=True)
class Ignore:
    """Source keys that carry no weights our model needs (step counters, anchors, momentum)."""

    pattern: str
    reason: str

    def readable(self) -> str:
        """The pattern for people: '.*\\.num_batches_tracked' -> '*.num_batches_tracked'."""
        text = re.sub(r"\\d\+", "#", self.pattern).replace(".*", "*").replace(".+", "*").replace("\\.", ".")
        return re.sub(r"\(([^()]*)\)", r"{\1}", text)


@dataclass
class MappingGroup:
    """One line of the mapping summary, '#' where the grouped keys' numbers differ, e.g.
    backbone.body.layer#.#.conv1.weight -> backbone.layer#.#.conv1.conv.weight (16 tensors)."""

    source: str
    target: str
    count: int


@dataclass
class ImportResult:
    """A checkpoint turned into our terms.

    spec: the framework's architecture and conventions; state_dict: our key -> float32 tensor,
    loads into build_model(spec) with strict=True; source: importer name (e.g. "detectron2");
    mapping_summary: how keys were renamed; unused_keys: source keys deliberately skipped (each
    group's reason is in mapping_summary); notes: detection and conversion remarks for people.
    """

    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    source: str
    mapping_summary: list[MappingGroup]
    unused_keys: list[str]
    notes: list[str] = field(default_factory=list)

    def build_model(self) -> RetinaNet:
        """Our model in eval mode with the imported weights (strict load)."""
        from retinanet_trt.model.retinanet import build_model

        model = build_model(self.spec)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()


@dataclass
class Architecture:
    """Sizes read from the (renamed) tensors; whatever is absent keeps the R50-FPN default."""

    depth: int = 50
    stem_channels: int = 64
    width_per_group: int = 64
    fpn_channels: int = 256
    p6_from: str = "c5"
    head_channels: int = 256
    num_convs: int = 4
    head_norm: str = "none"
    num_anchors: int = 9
    num_classes: int = 80
    head_shared: bool = True  # False: keys head.{level index}.* (one head per level)
    fpn_bias: bool = True
    head_bias: bool = True
    bn_step_counters: bool = False  # norms stored num_batches_tracked: trained as nn.BatchNorm2d


def listing(names: Iterable[str], first: int = 5) -> str:
    """'a, b, c (and 12 more)': the first few names and how many were left out."""
    items = list(names)
    shown = ", ".join(items[:first])
    return shown + (f" (and {len(items) - first} more)" if len(items) > first else "")


def is_tensor(value: Any) -> bool:
    """An ndarray or a torch.Tensor (which can only exist once torch is imported)."""
    torch_mod = sys.modules.get("torch")
    return isinstance(value, np.ndarray) or (torch_mod is not None and isinstance(value, torch_mod.Tensor))


def shape_of(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in value.shape)


def _pattern(key: str) -> str:
    return re.sub(r"\d+", "#", key)


def _common_pattern(keys: list[str]) -> str:
    """Keys of one digit pattern -> the pattern with '#' only where their numbers differ:
    res2_0_branch2a_w, res3_0_branch2a_w -> res#_0_branch2a_w."""
    pieces = [re.split(r"(\d+)", k) for k in keys]
    first = pieces[0]
    return "".join(p if i % 2 == 0 or all(q[i] == p for q in pieces) else "#" for i, p in enumerate(first))


# ResNet blocks per stage -> depth, for basic (no conv3) and bottleneck blocks.
RESNET_DEPTHS: dict[tuple[bool, tuple[int, ...]], int] = {
    (False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34, (True, (3, 4, 6, 3)): 50, (True, (3, 4, 23, 3)): 101,
    (True, (3, 8, 36, 3)): 152,
}


def infer_architecture(shapes: dict[str, tuple[int, ...]], default_p6: str) -> Architecture:
    """Read depth, widths, P6 source, head size and class count from our-named tensor shapes.

    default_p6 decides when the p6 weight cannot tell (its input width equals both C5's and the
    FPN's); missing tensors leave defaults and are reported later by the fit check.
    """
    arch = Architecture()
    blocks = []
    for stage in range(1, 5):
        idx = [int(m.group(1)) for k in shapes if (m := re.match(rf"backbone\.layer{stage}\.(\d+)\.", k))]
        blocks.append(max(idx) + 1 if idx else 0)
    bottleneck = any(re.match(r"backbone\.layer1\.0\.conv3\.", k) for k in shapes)
    if all(blocks):  # with a stage absent, the fit check reports the missing tensors instead
        depth = RESNET_DEPTHS.get((bottleneck, tuple(blocks)))
        if depth is None:
            kind = "bottleneck" if bottleneck else "basic"
            raise UsageError(
                f"ResNet with {kind} blocks per stage {blocks} is not supported (ResNet-18/34/50/101/152 are)"
            )
        arch.depth = depth
    if (s := shapes.get("backbone.stem.conv.conv.weight")) is not None:
        arch.stem_channels = s[0]
    if (s := shapes.get("backbone.layer1.0.conv1.conv.weight")) is not None:
        arch.width_per_group = s[0]
    if (s := shapes.get("fpn.lateral5.weight")) is not None:
        arch.fpn_channels = s[0]
        arch.fpn_bias = "fpn.lateral5.bias" in shapes
        c5_channels = s[1]
        if (p6 := shapes.get("fpn.p6.weight")) is not None:
            if p6[1] == c5_channels and p6[1] != arch.fpn_channels:
                arch.p6_from = "c5"
            elif p6[1] == arch.fpn_channels and p6[1] != c5_channels:
                arch.p6_from = "p5"
            else:
                arch.p6_from = default_p6
    arch.head_shared = not any(re.match(r"head\.\d+\.", k) for k in shapes)
    head = "head." if arch.head_shared else "head.0."  # per-level heads: level 0 tells the sizes
    towers = [k for k in shapes if re.fullmatch(re.escape(head) + r"cls_tower\.\d+\.conv\.weight", k)]
    arch.num_convs = len(towers)
    if (s := shapes.get(f"{head}cls_tower.0.conv.weight")) is not None:
        arch.head_channels = s[0]
    if f"{head}cls_tower.0.norm.weight" in shapes:
        arch.head_norm = "gn"
    arch.head_bias = f"{head}cls_pred.bias" in shapes or f"{head}cls_pred.weight" not in shapes
    if (box := shapes.get(f"{head}box_pred.weight")) is not None:
        if box[0] % 4:
            raise UsageError(f"box predictor has {box[0]} output channels, not a multiple of 4")
        arch.num_anchors = box[0] // 4
    if (cls := shapes.get(f"{head}cls_pred.weight")) is not None:
        if cls[0] % arch.num_anchors:
            raise UsageError(
                f"class predictor has {cls[0]} output channels, not a multiple of {arch.num_anchors} anchors"
            )
        arch.num_classes = cls[0] // arch.num_anchors
    if arch.num_anchors != 9:
        raise UsageError(
            f"the checkpoint has {arch.num_anchors} anchors per location; the importers know the frameworks' "
            "default 3 sizes x 3 aspect ratios (9) only"
        )
    return arch


def apply_architecture(spec: ModelSpec, arch: Architecture) -> ModelSpec:
    """Copy the inferred sizes into a framework's base spec (in place; returns it)."""
    spec.backbone.depth = arch.depth
    spec.backbone.stem_channels = arch.stem_channels
    spec.backbone.width_per_group = arch.width_per_group
    spec.fpn.out_channels = arch.fpn_channels
    spec.fpn.p6_from = arch.p6_from
    spec.head.channels = arch.head_channels
    spec.head.num_convs = arch.num_convs
    spec.head.norm = arch.head_norm
    spec.head.num_anchors = arch.num_anchors
    spec.head.num_classes = arch.num_classes
    spec.head.shared = arch.head_shared
    spec.head.bias = arch.head_bias
    spec.fpn.bias = arch.fpn_bias
    return spec


def set_coco_labels(spec: ModelSpec, first_label: int) -> None:
    """80 channels: COCO category ids and names (sorted-id order, the frameworks' contiguous
    classes). Other counts: the framework's own contiguous ids first_label.. and generic names."""
    k = spec.head.num_classes
    if k == len(COCO_IDS):
        spec.postprocess.label_map, spec.postprocess.class_names = list(COCO_IDS), list(COCO_NAMES)
    else:
        spec.postprocess.label_map, spec.postprocess.class_names = [first_label + i for i in range(k)], None


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Our model's state-dict key -> shape, built on the meta device (no memory, no init cost)."""
    import torch

    from retinanet_trt.model.retinanet import RetinaNet

    with torch.device("meta"):
        model = RetinaNet(spec)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def count_parameters(spec: ModelSpec) -> tuple[int, int]:
    """(learned parameters: conv/GN weights and biases, frozen-norm buffers) of build_model(spec)."""
    import torch

    from retinanet_trt.model.retinanet import RetinaNet

    with torch.device("meta"):
        model = RetinaNet(spec)
    return sum(p.numel() for p in model.parameters()), sum(b.numel() for b in model.buffers())


def to_float_tensor(value: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A contiguous float32 CPU copy (pickled arrays are read-only; fp16 checkpoints widen)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float32).contiguous().clone()
    return torch.from_numpy(np.array(value, dtype=np.float32, copy=True))


class Importer:
    """Base class: subclasses set name/title/rules/ignores/default_p6 and implement base_spec."""

    name: str = ""
    title: str = ""
    rules: tuple[Rule, ...] = ()
    ignores: tuple[Ignore, ...] = ()
    default_p6: str = "c5"

    def base_spec(self, arch: Architecture) -> ModelSpec:
        """The framework's conventions for this architecture (anchors, coder, pre/post, labels)."""
        raise NotImplementedError

    def fill_missing(self, mapped: dict[str, Any], notes: list[str]) -> None:
        """Hook for tensors the framework's own loader synthesises when absent (default: none)."""

    def target(self, key: str) -> str | None:
        for rule in self.rules:
            if (dst := rule.apply(key)) is not None:
                return dst
        return None

    def ignore_rule(self, key: str) -> Ignore | None:
        return next((i for i in self.ignores if re.fullmatch(i.pattern, key)), None)

    def count_known(self, keys: Iterable[str]) -> int:
        """How many keys this framework's names account for (used by --source auto)."""
        return sum(1 for k in keys if self.ignore_rule(k) is not None or self.target(k) is not None)

    def convert(self, tensors: dict[str, Any], notes: list[str]) -> ImportResult:
        """Rename, infer the architecture, check the fit strictly and convert to float32 tensors."""
        mapped: dict[str, Any] = {}
        origin: dict[str, str] = {}
        pairs: list[tuple[str, str]] = []  # (source key or ignore pattern, our key or the reason)
        unused: list[str] = []
        unexpected: list[str] = []
        duplicates: list[str] = []
        not_tensors: list[str] = []
        for key, value in tensors.items():
            if (ignore := self.ignore_rule(key)) is not None:
                unused.append(key)
                pairs.append((ignore.readable(), f"(ignored: {ignore.reason})"))
                continue
            dst = self.target(key)
            if dst is None:
                unexpected.append(key)
            elif not is_tensor(value):
                not_tensors.append(f"{key} ({type(value).__name__})")
            elif dst in mapped:
                duplicates.append(f"{origin[dst]} and {key} -> {dst}")
            else:
                mapped[dst], origin[dst] = value, key
                pairs.append((key, dst))
        self.fill_missing(mapped, notes)
        shapes = {k: shape_of(v) for k, v in mapped.items()}
        arch = infer_architecture(shapes, self.default_p6)
        arch.bn_step_counters = any(k.endswith(".num_batches_tracked") for k in unused)
        spec = self.base_spec(arch)
        spec.validate()
        expected = expected_shapes(spec)
        missing = [k for k in expected if k not in mapped]
        unexpected += [origin.get(k, k) for k in mapped if k not in expected]
        wrong = [
            f"{origin.get(k, k)} {list(shapes[k])} (expected {list(want)})"
            for k, want in expected.items()
            if k in shapes and shapes[k] != want
        ]
        problems = [
            (missing, "missing (our names)"),
            (unexpected, "unexpected"),
            (wrong, "wrong-shaped"),
            (duplicates, "mapped twice"),
            (not_tensors, "not tensors"),
        ]
        if any(items for items, _ in problems):
            parts = [f"{len(items)} {what}: {listing(items)}" for items, what in problems if items]
            raise UsageError(
                f"checkpoint does not fit {self.title} {spec_summary(spec)} ({len(tensors)} keys): " + "; ".join(parts)
            )
        state_dict = {k: to_float_tensor(mapped[k]) for k in expected}
        nonfinite = [origin.get(k, k) for k, t in state_dict.items() if not bool(t.isfinite().all())]
        if nonfinite:  # a damaged or diverged checkpoint: every output would be NaN
            raise UsageError(f"{len(nonfinite)} tensors hold NaN or Inf: {listing(nonfinite)}")
        return ImportResult(spec, state_dict, self.name, group_mapping(pairs), sorted(unused), notes)


def group_mapping(pairs: Iterable[tuple[str, str]]) -> list[MappingGroup]:
    """(source key, our key) pairs -> one MappingGroup per digit pattern, '#' where numbers differ."""
    groups: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for src, dst in pairs:
        groups[(_pattern(src), _pattern(dst))].append((src, dst))
    return [MappingGroup(_common_pattern([a for a, _ in g]), _common_pattern([b for _, b in g]), len(g))
            for g in groups.values()]


def spec_summary(spec: ModelSpec) -> str:
    """e.g. 'ResNet-50-FPN (256 ch, P6 from c5), head 4x256, 9 anchors x 80 classes'."""
    h = spec.head
    gn = "+GN" if h.norm == "gn" else ""
    return (
        f"ResNet-{spec.backbone.depth}-FPN ({spec.fpn.out_channels} ch, P6 from {spec.fpn.p6_from}), "
        f"head {h.num_convs}x{h.channels}{gn}, {h.num_anchors} anchors x {h.num_classes} classes"
    )
