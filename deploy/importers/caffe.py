"""Caffe ports of maskrcnn-benchmark RetinaNets: a ``.prototxt`` (structure) with its ``.caffemodel``
(blobs), read with protobuf only (importers.caffe_proto), no Caffe installed. TensorRT has had no
Caffe parser since 10.0, so this is their way to an engine.

Layer names are the maskrcnn-benchmark module names with '.' -> '_' (backbone_body_stem_conv1,
backbone_body_layer1_0_downsample_0, backbone_fpn_fpn_inner4, backbone_fpn_top_blocks_p6, ...).
That replacement cannot be undone, so the expected names are generated from the structure and
looked up; the graph is then walked from the input, and every conv must read what the RetinaNet
reads. Each conv's norm is whatever BatchNorm / Scale layers follow it (a FrozenBN ported as Scale
with bias, or BatchNorm + Scale; with the conv's own bias), folded into norm.kind "affine". The
FPN's top-down path is a Deconvolution (group C, k4 s2 p1, Caffe's bilinear filler) -> fpn.upsample
"deconv" with the stored weights. The head runs once per level, so each level has its own copy of
its layers (rpn_head_cls_tower_0 plus any suffix, e.g. rpn_head_cls_tower_0_p4, found along the
graph from P_l); identical copies are one shared head, differing ones a head per level.

Read from the prototxt: pads and pooling rounding (stem pool k3 s2 p0/p1 ceil or p1 floor), where
the stride sits (the 1x1 or the 3x3 conv), P6's input (C5 or P5), channels, classes. Caffe files
hold no pre- or post-processing: maskrcnn-benchmark's defaults apply (BGR 0-255 Caffe means,
800/1333, legacy anchors, (10, 10, 5, 5) +1 box coder, NMS 0.4, 100 detections); change them with
trt-export --spec / --set / --class-names.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.importers.caffe_graph import Affine, CaffeGraph, Layer, window
from retinanet_trt.importers.caffe_proto import parse_prototxt, read_caffemodel_blobs
from retinanet_trt.importers.common import RESNET_DEPTHS, Architecture, ImportResult, group_mapping, to_float_tensor
from retinanet_trt.spec import ModelSpec, NormSpec

if TYPE_CHECKING:
    import torch

NAME = "caffe"
SUPPORTED = ("Input", "Convolution", "Deconvolution", "Pooling", "BatchNorm", "Scale", "Eltwise", "ReLU")
_STEM_POOLS = {(0, True): "caffe_ceil", (1, True): "caffe_ceil_p1", (1, False): "pytorch"}


def find_prototxt(caffemodel: Path, prototxt: Path | None) -> Path:
    """The prototxt given, else the one beside the caffemodel with its stem, else deploy.prototxt there."""
    if prototxt is not None:
        if not prototxt.is_file():
            raise UsageError(f"--prototxt {prototxt} not found")
        return prototxt
    for candidate in (caffemodel.with_suffix(".prototxt"), caffemodel.parent / "deploy.prototxt"):
        if candidate.is_file():
            return candidate
    raise UsageError(f"{caffemodel} is a Caffe .caffemodel: its net structure is in a .prototxt; pass it with "
                     f"--prototxt (looked for {caffemodel.with_suffix('.prototxt').name} and deploy.prototxt beside it)")


class _Walk:
    """Walks one net along the RetinaNet structure, collecting our state dict."""

    def __init__(self, graph: CaffeGraph) -> None:
        self.g = graph
        self.sd: dict[str, np.ndarray] = {}
        self.pairs: list[tuple[str, str]] = []  # (caffe layer/blob, our key)

    def _store(self, key: str, value: np.ndarray, source: str) -> None:
        self.sd[key] = value
        self.pairs.append((source, key))

    def _conv_weights(self, node: Layer, kind: str = "Convolution") -> tuple[np.ndarray, np.ndarray | None]:
        p = node.param
        want = 2 if p.bias_term else 1
        if len(node.blobs) != want:
            raise UsageError(f"layer {node.name!r}: {kind} with bias_term {p.bias_term} needs {want} blobs in the "
                             f"caffemodel, has {len(node.blobs)}")
        weight = node.blobs[0]
        if weight.ndim != 4 or weight.shape[0] != (p.num_output if kind == "Convolution" else weight.shape[0]):
            raise UsageError(f"layer {node.name!r}: weight blob of shape {list(weight.shape)} for num_output {p.num_output}")
        return weight, (node.blobs[1].reshape(-1) if p.bias_term else None)

    def conv(self, name: str, bottom: str | None, key: str, stride: int, norm: bool) -> tuple[Layer, str]:
        """Our conv `key` from Caffe layer `name`: (the layer, its output blob after any norm layers)."""
        node = self.g.layer(name, "Convolution", bottom)
        weight, bias = self._conv_weights(node)
        k, s, pad = window(node.param, name)
        if node.param.group != 1 or weight.shape[2:] != (k, k) or s != stride or pad != k // 2:
            raise UsageError(f"layer {name!r}: k{k} s{s} p{pad} group {node.param.group}, expected k{weight.shape[2]} "
                             f"s{stride} p{weight.shape[2] // 2} group 1 here")
        self._store(f"{key}.weight", weight, f"{name} blob 0")
        if norm:
            out, affine = self.g.norms(node.tops[0], bias, weight.shape[0])
            self._store_norm(key.rsplit(".", 1)[0] + ".norm", affine, name)
            return node, out
        if self.g.consumers[node.tops[0]] and all(c.type in ("BatchNorm", "Scale") for c in self.g.consumers[node.tops[0]]):
            raise UsageError(f"layer {name!r} is followed by a norm layer; the FPN and head have none")
        if bias is not None:
            self._store(f"{key}.bias", bias, f"{name} blob 1")
        return node, node.tops[0]

    def _store_norm(self, key: str, affine: Affine, conv_name: str) -> None:
        self.sd[f"{key}.weight"] = affine.scale.astype(np.float32)
        self.sd[f"{key}.bias"] = affine.shift.astype(np.float32)
        source = " + ".join(affine.layers) or f"{conv_name} (no norm layer)"
        self.pairs.append((source, f"{key}.weight"))

    def upsample(self, top: str, level: int, channels: int) -> str:
        node = self.g.consumer(top, "Deconvolution", f"the top-down upsampling to P{level}")
        weight, bias = self._conv_weights(node, "Deconvolution")
        k, s, p = window(node.param, node.name)
        if (k, s, p, node.param.group, node.param.num_output) != (4, 2, 1, channels, channels) or weight.shape != (
                channels, 1, 4, 4):
            raise UsageError(f"layer {node.name!r}: only a per-channel x2 Deconvolution (k4 s2 p1, group = num_output "
                             f"= {channels}) is supported as FPN upsampling")
        if bias is not None and np.any(bias != 0):
            raise UsageError(f"layer {node.name!r}: the upsampling Deconvolution has a non-zero bias")
        self._store(f"fpn.upsample{level}.weight", weight, f"{node.name} blob 0")
        return node.tops[0]


def _fpn_and_head(w: _Walk, arch: Architecture, c3: str, c4: str, c5: str) -> None:
    """FPN, P6/P7 and the heads of every level, into w.sd; their sizes and flags into arch."""
    g = w.g
    _, inner5 = w.conv("backbone_fpn_fpn_inner4", c5, "fpn.lateral5", 1, False)
    fpn_ch = w.sd["fpn.lateral5.weight"].shape[0]
    _, lat4 = w.conv("backbone_fpn_fpn_inner3", c4, "fpn.lateral4", 1, False)
    inner4 = g.eltwise_sum(lat4, w.upsample(inner5, 4, fpn_ch), "P4's top-down sum")
    _, lat3 = w.conv("backbone_fpn_fpn_inner2", c3, "fpn.lateral3", 1, False)
    inner3 = g.eltwise_sum(lat3, w.upsample(inner4, 3, fpn_ch), "P3's top-down sum")
    levels = [w.conv(f"backbone_fpn_fpn_layer{i}", inner, f"fpn.output{i + 1}", 1, False)[1]
              for i, inner in ((2, inner3), (3, inner4), (4, inner5))]
    p6_node = g.by_name.get("backbone_fpn_top_blocks_p6")
    p6_from = "p5" if p6_node is not None and p6_node.bottoms == [levels[2]] else "c5"
    _, p6 = w.conv("backbone_fpn_top_blocks_p6", c5 if p6_from == "c5" else levels[2], "fpn.p6", 2, False)
    _, p7 = w.conv("backbone_fpn_top_blocks_p7", g.relu(p6, "before P7"), "fpn.p7", 2, False)
    levels += [p6, p7]
    copies: list[dict[str, np.ndarray]] = []
    for feature in levels:
        head = _Walk(g)
        for tower, pred, ours in (("cls_tower", "cls_logits", "cls"), ("bbox_tower", "bbox_pred", "box")):
            blob, n = feature, 0
            while True:
                node = next((c for c in g.consumers[blob] if c.type == "Convolution"
                             and _named(c.name, f"rpn_head_{tower}_{2 * n}")), None)
                if node is None:
                    break
                _, out = head.conv(node.name, blob, f"head.{ours}_tower.{n}.conv", 1, False)
                blob, n = g.relu(out, f"after {node.name}"), n + 1
            last = next((c for c in g.consumers[blob] if c.type == "Convolution" and _named(c.name, f"rpn_head_{pred}")),
                        None)
            if last is None:
                raise UsageError(f"no rpn_head_{pred} layer reads {g.blob_name([blob])} (the {ours} tower of a level)")
            head.conv(last.name, blob, f"head.{ours}_pred", 1, False)
        copies.append(head.sd)
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
    arch.fpn_channels, arch.p6_from, arch.num_convs, arch.head_shared = fpn_ch, p6_from, convs, shared
    arch.head_channels = copies[0]["head.cls_tower.0.conv.weight"].shape[0] if convs else fpn_ch
    arch.num_anchors, arch.num_classes = 9, cls // 9
    arch.fpn_bias = any(k.startswith("fpn.") and k.endswith(".bias") for k in w.sd)
    arch.head_bias = any(k.endswith(".bias") for k in copies[0])


def _named(name: str, base: str) -> bool:
    """name is base, or base and a suffix that does not continue its number (tower_2 is not tower_20)."""
    return name == base or (name.startswith(base) and not name[len(base)].isdigit())


def _backbone(w: _Walk) -> tuple[Architecture, str, bool, list[str]]:
    """Stem and ResNet stages; returns (architecture so far, stem pool, stride in 1x1, [C3, C4, C5])."""
    g = w.g
    stem, out = w.conv("backbone_body_stem_conv1", g.input, "backbone.stem.conv.conv", 2, True)
    pool = g.consumer(g.relu(out, "after the stem conv"), "Pooling", "the stem max-pool")
    k, s, pad = window(pool.param, pool.name)
    ceil = pool.param.round_mode == 0
    if pool.param.pool != 0 or (k, s) != (3, 2) or (pad, ceil) not in _STEM_POOLS:
        raise UsageError(f"layer {pool.name!r}: stem pool k{k} s{s} p{pad} {'ceil' if ceil else 'floor'} is not one of "
                         "MAX k3 s2 p0 ceil, p1 ceil or p1 floor")
    t = pool.tops[0]
    bottleneck = "backbone_body_layer1_0_conv3" in g.by_name
    first = g.by_name.get("backbone_body_layer2_0_conv1")
    stride_in_1x1 = first is not None and first.param is not None and window(first.param, first.name)[1] == 2
    blocks, feats = [], []
    for stage in range(1, 5):
        n = 0
        while f"backbone_body_layer{stage}_{n}_conv1" in g.by_name:
            base, key = f"backbone_body_layer{stage}_{n}", f"backbone.layer{stage}.{n}"
            stride = 2 if n == 0 and stage > 1 else 1
            convs = 3 if bottleneck else 2
            strided = 1 if stride_in_1x1 or not bottleneck else 2  # which conv of the block holds the stride
            x = t
            for c in range(1, convs + 1):
                here = stride if c == strided else 1
                _, x = w.conv(f"{base}_conv{c}", x, f"{key}.conv{c}.conv", here, True)
                if c < convs:
                    x = g.relu(x, f"after {base}_conv{c}")
            identity = t
            if f"{base}_downsample_0" in g.by_name:
                _, identity = w.conv(f"{base}_downsample_0", t, f"{key}.downsample.conv", stride, True)
            t = g.relu(g.eltwise_sum(x, identity, f"{base}'s residual sum"), f"after {base}'s sum")
            n += 1
        blocks.append(n)
        feats.append(t)
    depth = RESNET_DEPTHS.get((bottleneck, tuple(blocks)))
    if depth is None:
        raise UsageError(f"ResNet with blocks per stage {blocks} is not supported")
    arch = Architecture(depth=depth, stem_channels=stem.blobs[0].shape[0],
                        width_per_group=w.sd["backbone.layer1.0.conv1.conv.weight"].shape[0])
    return arch, _STEM_POOLS[(pad, ceil)], stride_in_1x1, feats[1:]


def expected_names(spec: ModelSpec) -> list[str]:
    """The Caffe layer names of a spec's convs (maskrcnn-benchmark names, '.' -> '_'); UsageError if
    two PyTorch names collide once their dots are replaced."""
    from retinanet_trt.model.resnet import BLOCKS_PER_STAGE

    torch_names = ["backbone.body.stem.conv1"]
    for stage, n in enumerate(BLOCKS_PER_STAGE[spec.backbone.depth], start=1):
        for i in range(n):
            convs = 2 if spec.backbone.depth in (18, 34) else 3
            torch_names += [f"backbone.body.layer{stage}.{i}.conv{c}" for c in range(1, convs + 1)]
            if i == 0 and (stage > 1 or spec.backbone.depth not in (18, 34)):
                torch_names.append(f"backbone.body.layer{stage}.{i}.downsample.0")
    torch_names += [f"backbone.fpn.fpn_{kind}{i}" for kind in ("inner", "layer") for i in (2, 3, 4)]
    torch_names += ["backbone.fpn.top_blocks.p6", "backbone.fpn.top_blocks.p7"]
    torch_names += [f"rpn.head.{t}_tower.{2 * n}" for t in ("cls", "bbox") for n in range(spec.head.num_convs)]
    torch_names += ["rpn.head.cls_logits", "rpn.head.bbox_pred"]
    caffe = [n.replace(".", "_") for n in torch_names]
    clashes = [name for name, count in Counter(caffe).items() if count > 1]
    if clashes:
        raise UsageError(f"PyTorch names collide as Caffe names: {', '.join(clashes)}")
    return caffe


def import_caffe(caffemodel: Path, prototxt: Path | None = None) -> ImportResult:
    """A Caffe port -> our spec and state dict (strict fit against build_model(spec))."""
    from retinanet_trt.importers import maskrcnn_benchmark
    from retinanet_trt.importers.common import expected_shapes

    proto = find_prototxt(caffemodel, prototxt)
    net = parse_prototxt(proto.read_text(encoding="utf-8", errors="replace"), SUPPORTED, str(proto))
    try:
        blobs = read_caffemodel_blobs(caffemodel.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{caffemodel} is truncated or not a Caffe caffemodel (protobuf scan: {exc})") from None
    try:
        graph = CaffeGraph(net, blobs)
        walk = _Walk(graph)
        arch, stem_pool, stride_in_1x1, (c3, c4, c5) = _backbone(walk)
        _fpn_and_head(walk, arch, c3, c4, c5)
        leftover = graph.unvisited()
        if leftover:
            raise UsageError(f"{len(leftover)} layers are not part of the RetinaNet structure: {', '.join(leftover[:5])}")
    except UsageError as exc:
        raise UsageError(f"{proto}: {exc}") from None
    spec = maskrcnn_benchmark.IMPORTER.base_spec(arch)
    spec.name, spec.source = "caffe_retinanet", NAME
    spec.backbone.norm = NormSpec("affine", 0.0)
    spec.backbone.stem_pool, spec.backbone.stride_in_1x1 = stem_pool, stride_in_1x1
    spec.fpn.upsample = "deconv"
    spec.validate()
    expected_names(spec)
    want = expected_shapes(spec)
    got = {k: tuple(v.shape) for k, v in walk.sd.items()}
    if got != want:
        wrong = sorted(set(got) ^ set(want)) or [k for k in want if got[k] != want[k]]
        raise UsageError(f"{caffemodel}: the blobs do not fit {spec.name} ({', '.join(wrong[:5])})")
    state_dict: dict[str, torch.Tensor] = {k: to_float_tensor(walk.sd[k]) for k in want}
    notes = [f"Caffe net {proto.name} ({len(graph.layers)} layers) with {caffemodel.name} "
             f"({sum(len(b) for b in blobs.values())} blobs in {len(blobs)} layers, all consumed)",
             f"head {'shared over levels (identical copies)' if arch.head_shared else 'one per level'}; "
             f"stem pool {stem_pool}; stride in the {'1x1' if stride_in_1x1 else '3x3'} conv; P6 from {arch.p6_from}",
             "pre- and post-processing are maskrcnn-benchmark's defaults (a caffemodel holds none): "
             "set them with trt-export --spec/--set/--class-names"]
    return ImportResult(spec, state_dict, NAME, group_mapping(walk.pairs), [], notes)
