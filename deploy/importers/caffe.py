"""Caffe ports of maskrcnn-benchmark RetinaNets: a ``.prototxt`` (structure) with its ``.caffemodel``
(blobs), read with protobuf only (importers.caffe_proto), no Caffe installed. TensorRT has had no
Caffe parser since 10.0, so this is their way to an engine.

The network is what the file computes: blobs are followed from tops to bottoms in the order Caffe
runs the layers, in-place layers included (importers.caffe_graph), so a port whose dataflow differs
from maskrcnn-benchmark's (an in-place ReLU on P6 that the head then reads, a group-less upsampling
Deconvolution) is exported as Caffe computes it, and the import notes say how it differs. The input
is an Input or DummyData layer, or the net's `input:` with input_shape / input_dim.

Layer names are the maskrcnn-benchmark module names with '.' -> '_' (backbone_body_stem_conv1,
backbone_body_layer1_0_downsample_0, backbone_fpn_fpn_inner4, backbone_fpn_top_blocks_p6, ...), or an
alias from the one table in importers/caffe_names.py (the seed's NetSpec port writes
backbone_fpn_fpn_inner3_lateral, backbone_fpn_topblocks_p6 and rpn_head_cls_tower_p2_0). The '.' ->
'_' replacement cannot be undone, so the expected names are generated from the structure and looked
up, and every conv must read what the RetinaNet reads. Each conv's norm is whatever BatchNorm /
Scale layers follow it (a FrozenBN ported as Scale with bias, or BatchNorm + Scale; with the conv's
own bias), folded into norm.kind "affine". The FPN's top-down path is a Deconvolution (k4 s2 p1,
any group, its stored weights) -> fpn.upsample "deconv". The head runs once per level, so each
level has its own copy of its layers (importers.caffe_fpn); identical copies are one shared head,
differing ones a head per level.

Read from the prototxt: pads and pooling rounding (stem pool k3 s2 p0/p1 ceil or p1 floor), where
the stride sits (the 1x1 or the 3x3 conv), P6's input (C5 or P5), channels, classes. Caffe files
hold no pre- or post-processing: maskrcnn-benchmark's defaults apply (BGR 0-255 Caffe means,
800/1333, legacy anchors, (10, 10, 5, 5) +1 box coder, NMS 0.4, 100 detections); change them with
trt-export --spec / --set / --class-names.
"""

from __future__ import annotations

import mmap
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.importers.caffe_fpn import FPNFlags, fpn_and_head
from retinanet_trt.importers.caffe_graph import CaffeGraph, window
from retinanet_trt.importers.caffe_proto import parse_prototxt, read_caffemodel_blobs
from retinanet_trt.importers.caffe_walk import Walk
from retinanet_trt.importers.common import RESNET_DEPTHS, Architecture, ImportResult, group_mapping, to_float_tensor
from retinanet_trt.spec import ModelSpec, NormSpec

if TYPE_CHECKING:
    import torch

NAME = "caffe"
SUPPORTED = ("Input", "DummyData", "Convolution", "Deconvolution", "Pooling", "BatchNorm", "Scale", "Eltwise", "ReLU")
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


def _backbone(w: Walk) -> tuple[Architecture, str, bool, list[str]]:
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


def _structure_notes(graph: CaffeGraph, walk: Walk, flags: FPNFlags, shared: bool, stem_pool: str,
                     stride_in_1x1: bool, p6_from: str) -> list[str]:
    """What the import read from the net, and how its dataflow differs from maskrcnn-benchmark's."""
    shape = " x ".join(map(str, graph.input_shape)) or "no shape"
    tags = [t for t in flags.level_tags if t]
    heads = "shared over levels (identical copies)" if shared else "one per level (the copies differ)"
    notes = [f"input: {graph.input_source} ({shape}; the export size is --input-size)",
             f"head {heads}" + (f", copies tagged {', '.join(flags.level_tags)} for P3..P7" if tags else "")
             + f"; stem pool {stem_pool}; stride in the {'1x1' if stride_in_1x1 else '3x3'} conv; P6 from {p6_from}"]
    if walk.aliases:
        notes.append("names from the alias table: " + ", ".join(f"{port} for {ours}" for ours, port in walk.aliases))
    notes += [f"dataflow differs from maskrcnn-benchmark: {n}" for n in flags.notes]
    return notes


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


def _read_blobs(caffemodel: Path) -> dict[str, list[np.ndarray]]:
    """The caffemodel's blobs, scanned from a memory map: a 2 GB port is not also held as bytes."""
    problem = None
    with caffemodel.open("rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise UsageError(f"{caffemodel} is empty, not a Caffe caffemodel")
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            blobs = read_caffemodel_blobs(mapped)  # every array is copied out of the map
        except (ValueError, UnicodeDecodeError) as exc:
            problem = str(exc)
        try:
            mapped.close()
        except BufferError:  # a view still refers to it (only on errors): the map closes when freed
            pass
    if problem is not None:
        raise UsageError(f"{caffemodel} is truncated or not a Caffe caffemodel (protobuf scan: {problem})")
    return blobs


def import_caffe(caffemodel: Path, prototxt: Path | None = None) -> ImportResult:
    """A Caffe port -> our spec and state dict (strict fit against build_model(spec))."""
    from retinanet_trt.importers import maskrcnn_benchmark
    from retinanet_trt.importers.common import expected_shapes

    proto = find_prototxt(caffemodel, prototxt)
    net = parse_prototxt(proto.read_text(encoding="utf-8", errors="replace"), SUPPORTED, str(proto))
    blobs = _read_blobs(caffemodel)
    try:
        graph = CaffeGraph(net, blobs)
        walk = Walk(graph)
        arch, stem_pool, stride_in_1x1, (c3, c4, c5) = _backbone(walk)
        flags = fpn_and_head(walk, arch, c3, c4, c5)
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
    spec.fpn.deconv_groups, spec.fpn.head_reads_relu_p6 = flags.deconv_groups, flags.head_reads_relu_p6
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
             *_structure_notes(graph, walk, flags, arch.head_shared, stem_pool, stride_in_1x1, arch.p6_from),
             "pre- and post-processing are maskrcnn-benchmark's defaults (a caffemodel holds none): "
             "set them with trt-export --spec/--set/--class-names"]
    return ImportResult(spec, state_dict, NAME, group_mapping(walk.pairs), [], notes)
