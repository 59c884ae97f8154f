"""The FPN, P6/P7 and the per-level heads of a Caffe port, walked along the blobs Caffe computes.

The dataflow is the file's, in-place layers included: when an in-place ReLU on P6 (for P7) runs
before the head's P6 layers read that blob, the head reads relu(P6), and the spec says so
(fpn.head_reads_relu_p6) where maskrcnn-benchmark feeds the head P6 unactivated. The top-down
Deconvolutions keep their group and stored weights (a group-less one is a full C x C kernel:
fpn.deconv_groups 1). The head runs once per level, so each level has its own copy of its layers,
found along the graph from P_l and named as importers/caffe_names.py allows; identical copies become
one shared head, differing ones a head per level.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.importers import caffe_names
from retinanet_trt.importers.caffe_graph import CaffeGraph
from retinanet_trt.importers.caffe_walk import Walk
from retinanet_trt.importers.common import Architecture

_TOWERS = (("cls", "cls_logits", "cls"), ("bbox", "bbox_pred", "box"))  # Caffe tower, predictor, our name


@dataclass
class FPNFlags:
    """What the FPN and heads of the file compute beyond the Architecture."""

    deconv_groups: int = 0  # 0: one group per channel
    head_reads_relu_p6: bool = False
    level_tags: list[str] = field(default_factory=list)  # the head copies' level tags, P3..P7
    notes: list[str] = field(default_factory=list)  # how the dataflow differs from maskrcnn-benchmark


def _head_starts(g: CaffeGraph, blob: str) -> list[str]:
    """Head layers (first tower conv or predictor, by name) that read `blob`."""
    return [c.name for c in g.consumers[blob] if c.type == "Convolution" and any(
        caffe_names.match(c.name, "rpn_head_{t}_tower_{n}", t=t, n=0) is not None
        or caffe_names.match(c.name, f"rpn_head_{pred}") is not None for t, pred, _ in _TOWERS)]


def _head_copy(g: CaffeGraph, feature: str, level: int) -> tuple[Walk, str]:
    """The head layers reading level `level`'s feature: (their walk, their level tag)."""
    head = Walk(g)
    tags: dict[str, str] = {}
    for tower, pred, ours in _TOWERS:
        blob, n = feature, 0
        while True:
            readers = [c.name for c in g.consumers[blob] if c.type == "Convolution"]
            what = f"conv {n} of P{level}'s {tower} tower"
            name = caffe_names.one_of(readers, "rpn_head_{t}_tower_{n}", what, t=tower, n=2 * n)
            if name is None:
                break
            tags[name] = caffe_names.match(name, "rpn_head_{t}_tower_{n}", t=tower, n=2 * n) or ""
            _, out = head.conv(name, blob, f"head.{ours}_tower.{n}.conv", 1, False)
            blob, n = g.relu(out, f"after {name}"), n + 1
        readers = [c.name for c in g.consumers[blob] if c.type == "Convolution"]
        name = caffe_names.one_of(readers, f"rpn_head_{pred}", f"P{level}'s {tower} predictor")
        if name is None:
            found = ", ".join(repr(c.name) for c in g.consumers[blob]) or "no layer"
            expected = " or ".join(caffe_names.spellings(f"rpn_head_{pred}")
                                   + (caffe_names.spellings("rpn_head_{t}_tower_{n}", t=tower, n=2 * n)))
            raise UsageError(f"no head layer reads {g.blob_name([blob])} (P{level}'s {ours} tower after {n} convs): "
                             f"expected a Convolution named {expected} (<level>: a tag such as _p{level}), found "
                             f"{found}")
        tags[name] = caffe_names.match(name, f"rpn_head_{pred}") or ""
        head.conv(name, blob, f"head.{ours}_pred", 1, False)
    if len(set(tags.values())) > 1:
        raise UsageError(f"P{level}'s head layers carry different level tags: "
                         + ", ".join(f"{k} ({v or 'untagged'})" for k, v in tags.items())
                         + "; name one level's copies with one tag")
    return head, next(iter(tags.values()))


def _top_down(w: Walk, c3: str, c4: str, c5: str) -> tuple[list[str], int, int]:
    """Laterals, Deconvolution upsampling and the 3x3 outputs: ([P3, P4, P5], channels, deconv group)."""
    g = w.g
    conv = w.find("backbone_fpn_fpn_inner{i}", "Convolution", c5, "the FPN lateral of C5", i=4)
    _, inner5 = w.conv(conv, c5, "fpn.lateral5", 1, False)
    ch = w.sd["fpn.lateral5.weight"].shape[0]
    inner, groups = {5: inner5}, []
    for level, c, i in ((4, c4, 3), (3, c3, 2)):
        conv = w.find("backbone_fpn_fpn_inner{i}", "Convolution", c, f"the FPN lateral of C{level}", i=i)
        _, lateral = w.conv(conv, c, f"fpn.lateral{level}", 1, False)
        up, deconv = w.upsample(inner[level + 1], level, ch)
        groups.append(deconv)
        inner[level] = g.eltwise_sum(lateral, up, f"P{level}'s top-down sum")
    if len({d.param.group for d in groups}) > 1:
        raise UsageError(f"the upsampling Deconvolutions {', '.join(repr(d.name) for d in groups)} have different "
                         "groups, which is not supported (the model upsamples both levels with one group)")
    outs = []
    for level in (3, 4, 5):
        conv = w.find("backbone_fpn_fpn_layer{i}", "Convolution", inner[level], f"the FPN output P{level}", i=level - 1)
        outs.append(w.conv(conv, inner[level], f"fpn.output{level}", 1, False)[1])
    return outs, ch, groups[0].param.group


def fpn_and_head(w: Walk, arch: Architecture, c3: str, c4: str, c5: str) -> FPNFlags:
    """FPN, P6/P7 and the heads of every level, into w.sd; their sizes into arch; the rest returned."""
    g = w.g
    flags = FPNFlags()
    levels, ch, group = _top_down(w, c3, c4, c5)
    flags.deconv_groups = 0 if group == ch else group
    if group != ch:
        kernel = f"a full {ch} x {ch} kernel" if group == 1 else f"{group} groups of {ch // group} x {ch // group}"
        flags.notes.append(f"the top-down Deconvolutions have group {group} ({kernel}): each output channel sums "
                           f"the x2 upsampled maps of {ch // group} input channels, where maskrcnn-benchmark "
                           f"upsamples each channel on its own; exported as ConvTranspose with group {group} and the "
                           "stored weights")
    from retinanet_trt.model.fpn import bilinear_deconv_weight  # torch: only when a port is converted

    stored = [w.sd[f"fpn.upsample{lv}.weight"] for lv in (3, 4)]
    if not all(np.array_equal(s, bilinear_deconv_weight(ch, per_group=ch // group).numpy()) for s in stored):
        flags.notes.append("the upsampling Deconvolutions' weights are not Caffe's bilinear filler; their stored "
                           "values are used")
    p6_node = w.find("backbone_fpn_top_blocks_p6", "Convolution", None, "P6")
    arch.p6_from = "p5" if p6_node.bottoms == [levels[2]] else "c5"
    _, p6 = w.conv(p6_node, c5 if arch.p6_from == "c5" else levels[2], "fpn.p6", 2, False)
    relu_p6 = g.relu(p6, "before P7")
    p7_node = w.find("backbone_fpn_top_blocks_p7", "Convolution", relu_p6, "P7")
    _, p7 = w.conv(p7_node, relu_p6, "fpn.p7", 2, False)
    raw, activated = _head_starts(g, p6), _head_starts(g, relu_p6)
    if raw and activated:
        raise UsageError(f"at P6 the head layers {', '.join(map(repr, raw))} read P6 and "
                         f"{', '.join(map(repr, activated))} read relu(P6), which is not supported (the model feeds "
                         "one of them to the whole P6 head)")
    if activated:
        relu = next(c for c in g.consumers[p6] if c.type == "ReLU")
        flags.head_reads_relu_p6 = True
        how = "in place on" if g.blob_name(relu.tops) == g.blob_name([p6]) else "on"
        flags.notes.append(f"the head reads relu(P6): ReLU {relu.name!r} runs {how} {g.blob_name([p6])} before the "
                           f"head's P6 layers read it, where maskrcnn-benchmark feeds P6 unactivated to the head "
                           "(relu(P6) only to P7); exported as Caffe computes it (fpn.head_reads_relu_p6)")
    copies: list[dict[str, np.ndarray]] = []
    for level, feature in zip(range(3, 8), [*levels, relu_p6 if activated else p6, p7]):
        head, tag = _head_copy(g, feature, level)
        copies.append(head.sd)
        flags.level_tags.append(tag)
        w.pairs += head.pairs
    convs = sum(1 for k in copies[0] if k.startswith("head.cls_tower.") and k.endswith(".weight"))
    if any(c.keys() != copies[0].keys() for c in copies):
        raise UsageError("the levels' heads differ in depth or biases")
    shared = all(np.array_equal(c[k], copies[0][k]) for c in copies[1:] for k in c)
    for i, c in enumerate(copies[:1] if shared else copies):
        for k, v in c.items():
            w.sd[k if shared else k.replace("head.", f"head.{i}.", 1)] = v
    box, cls = copies[0]["head.box_pred.weight"].shape[0], copies[0]["head.cls_pred.weight"].shape[0]
    if box != 36 or cls % 9:
        raise UsageError(f"predictors with {box} box and {cls} class channels are not 9 anchors x 4 and x K")
    arch.fpn_channels, arch.num_convs, arch.head_shared = ch, convs, shared
    arch.head_channels = copies[0]["head.cls_tower.0.conv.weight"].shape[0] if convs else ch
    arch.num_anchors, arch.num_classes = 9, cls // 9
    arch.fpn_bias = any(k.startswith("fpn.") and k.endswith(".bias") for k in w.sd)
    arch.head_bias = any(k.endswith(".bias") for k in copies[0])
    return flags

