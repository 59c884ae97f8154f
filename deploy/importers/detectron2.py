"""detectron2 RetinaNet (COCO-Detection/retinanet_R_50_FPN_*): model-zoo ``.pkl`` ({"model": {name:
ndarray}, "__author__": ...}) and trainer ``.pth`` ({"model": state_dict, "optimizer", ...}).

Keys (facts sheet section 2a): backbone.bottom_up.stem.conv1[.norm], res{2..5}.{i}.conv{1,2,3}[.norm]
and .shortcut[.norm] (stride in conv1, the 1x1), backbone.fpn_lateral{3,4,5} / fpn_output{3,4,5},
backbone.top_block.p6 (from C5) / p7, head.{cls,bbox}_subnet.{0,2,4,6}, head.cls_score, head.bbox_pred.
The spec is the detectron2 preset: FrozenBN eps 1e-5, size-major float anchors at offset 0, clip
after rescale to [0, W] and drop empty boxes, 100 detections, BGR 0-255 input.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from retinanet_trt.importers.common import Architecture, Ignore, Importer, Rule, apply_architecture, set_coco_labels
from retinanet_trt.spec import ModelSpec
from retinanet_trt.spec.presets import retinanet_r50_fpn

_NORM = r"(weight|bias|running_mean|running_var)"


def _stage(m: re.Match[str]) -> str:
    """res{2..5} -> layer{1..4}."""
    return f"backbone.layer{int(m.group(1)) - 1}.{m.group(2)}"


def _subnet(m: re.Match[str]) -> str:
    # cls_subnet / bbox_subnet are Sequential(conv, ReLU, conv, ReLU, ...): conv n sits at index 2n.
    which = "cls" if m.group(1) == "cls" else "box"
    return f"head.{which}_tower.{int(m.group(2)) // 2}.conv.{m.group(3)}"


class Detectron2Importer(Importer):
    name = "detectron2"
    title = "detectron2 RetinaNet"
    rules = (
        Rule(r"backbone\.bottom_up\.stem\.conv1\.weight", "backbone.stem.conv.conv.weight"),
        Rule(rf"backbone\.bottom_up\.stem\.conv1\.norm\.{_NORM}", r"backbone.stem.conv.norm.\1"),
        Rule(r"backbone\.bottom_up\.res([2-5])\.(\d+)\.conv([1-3])\.weight",
             lambda m: f"{_stage(m)}.conv{m.group(3)}.conv.weight"),
        Rule(rf"backbone\.bottom_up\.res([2-5])\.(\d+)\.conv([1-3])\.norm\.{_NORM}",
             lambda m: f"{_stage(m)}.conv{m.group(3)}.norm.{m.group(4)}"),
        Rule(r"backbone\.bottom_up\.res([2-5])\.(\d+)\.shortcut\.weight", lambda m: f"{_stage(m)}.downsample.conv.weight"),
        Rule(rf"backbone\.bottom_up\.res([2-5])\.(\d+)\.shortcut\.norm\.{_NORM}",
             lambda m: f"{_stage(m)}.downsample.norm.{m.group(3)}"),
        Rule(r"backbone\.fpn_lateral([3-5])\.(weight|bias)", r"fpn.lateral\1.\2"),
        Rule(r"backbone\.fpn_output([3-5])\.(weight|bias)", r"fpn.output\1.\2"),
        Rule(r"backbone\.top_block\.(p6|p7)\.(weight|bias)", r"fpn.\1.\2"),
        Rule(r"head\.(cls|bbox)_subnet\.(\d*[02468])\.(weight|bias)", _subnet),
        Rule(r"head\.cls_score\.(weight|bias)", r"head.cls_pred.\1"),
        Rule(r"head\.bbox_pred\.(weight|bias)", r"head.box_pred.\1"),
    )
    ignores = (
        Ignore(r"pixel_(mean|std)", "input normalisation, carried by the spec"),
        Ignore(r"anchor_generator\.cell_anchors\.\d+", "anchors, regenerated from the spec"),
        Ignore(r".*\.num_batches_tracked", "BatchNorm step counter"),
    )

    def fill_missing(self, mapped: dict[str, Any], notes: list[str]) -> None:
        # detectron2's FrozenBatchNorm2d loader fills running_mean 0 and running_var 1 when an old
        # (version < 2) checkpoint stores only weight and bias; do the same.
        filled = 0
        for key in [k for k in mapped if k.startswith("backbone.") and k.endswith(".norm.weight")]:
            prefix = key[: -len("weight")]
            if prefix + "running_mean" not in mapped and prefix + "running_var" not in mapped:
                n = mapped[key].shape[0]
                mapped[prefix + "running_mean"] = np.zeros(n, dtype=np.float32)
                mapped[prefix + "running_var"] = np.ones(n, dtype=np.float32)
                filled += 1
        if filled:
            notes.append(f"{filled} FrozenBN layers had no running statistics: filled mean 0, var 1 as detectron2 does")

    def base_spec(self, arch: Architecture) -> ModelSpec:
        spec = apply_architecture(retinanet_r50_fpn(), arch)
        spec.name = "detectron2_retinanet"
        spec.preprocess.resize_impl = "pillow_uint8"  # ResizeShortestEdge: PIL on uint8, then normalise
        set_coco_labels(spec, first_label=0)
        return spec


IMPORTER = Detectron2Importer()
