"""A Caffe net as a graph the importer walks, in the order Caffe executes it: layers in prototxt
order, each blob versioned on every write, so an in-place layer (ReLU, BatchNorm, Scale with top =
bottom) makes a new version and a later reader of that name reads the modified blob, as in Caffe.
Each layer keeps its parameters and stored blobs; lookups check that a layer reads what the
RetinaNet structure says it reads. Every visited layer is marked, so layers outside the structure
are reported rather than ignored.

Caffe semantics kept (BVLC/caffe src/caffe/layers/*.cpp, net.cpp, util/insert_splits.cpp,
caffe.proto): the input is an Input or DummyData layer or the net's `input:` (with input_shape or
input_dim); a DummyData whose filler is not constant refills its top on every forward, so it is
refused; a top name already written must be the layer's own bottom (in place), and the blob an
in-place layer overwrites may have no other reader, or Net::AppendTop stops with "produced by
multiple sources"; Convolution bias_term defaults to true and its output rounds down; Pooling rounds
up unless round_mode FLOOR; Scale's bias_term defaults to false; BatchNorm's blobs are mean * f,
var * f, f (f = 0 means 0); layers whose include/exclude rules leave them out of the TEST phase are
dropped, as Net::FilterNet does.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.importers.caffe_proto import layer_type

_TEST = 1  # Phase TEST


@dataclass
class Layer:
    name: str
    type: str
    bottoms: list[str]  # versioned blob ids, "blob#k"
    tops: list[str]
    param: Any  # the layer's *_param message (or None)
    blobs: list[np.ndarray] = field(default_factory=list)


@dataclass
class Affine:
    """A conv's per-channel scale and shift after its norm layers, in float64 (C,)."""

    scale: np.ndarray
    shift: np.ndarray
    layers: list[str]


def _in_test_phase(layer: Any) -> bool:
    def matches(rule: Any) -> bool:
        if rule.HasField("min_level") or rule.HasField("max_level") or rule.stage or rule.not_stage:
            raise UsageError(f"layer {layer.name!r}: include/exclude rules with levels or stages are not supported")
        return not rule.HasField("phase") or rule.phase == _TEST

    if layer.include:
        return any(matches(r) for r in layer.include)
    return not any(matches(r) for r in layer.exclude)


_PARAM_FIELD = {"Convolution": "convolution_param", "Deconvolution": "convolution_param", "Pooling": "pooling_param",
                "BatchNorm": "batch_norm_param", "Scale": "scale_param", "Eltwise": "eltwise_param",
                "ReLU": "relu_param", "Input": "input_param", "DummyData": "dummy_data_param"}
INPUT_LAYERS = ("Input", "DummyData")


def _input_shapes(layer: Any, kind: str) -> list[list[int]]:
    """The shapes an Input or DummyData layer declares (one, or one per top)."""
    if kind == "Input":
        return [list(s.dim) for s in layer.input_param.shape]
    p = layer.dummy_data_param
    for filler in p.data_filler:
        if filler.type != "constant":
            raise UsageError(f"layer {layer.name!r}: DummyData with a {filler.type!r} filler refills its top on every "
                             "forward, so Caffe never sees the image; use a constant filler or an Input layer")
    if p.num or p.channels or p.height or p.width:  # the deprecated 4-D form
        legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
        return [[dims[min(i, len(dims) - 1)] if dims else 0 for dims in legacy] for i in range(len(layer.top))]
    return [list(s.dim) for s in p.shape]


def _net_input_shapes(net: Any) -> list[list[int]]:
    """The shapes of the net-level `input:` blobs (input_shape, or 4 input_dim per input)."""
    if net.input_shape:
        return [list(s.dim) for s in net.input_shape]
    dims = list(net.input_dim)
    return [dims[i : i + 4] for i in range(0, len(dims), 4)]


class CaffeGraph:
    """Layers of a NetParameter (new or V1 format) with their caffemodel blobs, in SSA form."""

    def __init__(self, net: Any, blobs: dict[str, list[np.ndarray]]) -> None:
        version: dict[str, int] = defaultdict(int)
        writer: dict[str, str] = {}
        self.layers: list[Layer] = []
        self.by_name: dict[str, Layer] = {}
        inputs = list(net.input)
        shapes = _net_input_shapes(net)
        sources = ["the net's input"] * len(inputs)
        for name in inputs:
            version[name], writer[name] = 1, "the net's input"
        in_place: list[tuple[Layer, str]] = []
        raw = [layer for layer in [*net.layer, *net.layers] if _in_test_phase(layer)]
        for layer in raw:
            kind = layer_type(layer)
            missing = [b for b in layer.bottom if version[b] == 0]
            if missing:
                raise UsageError(f"layer {layer.name!r} reads blob {missing[0]!r}, which no earlier layer writes")
            bottoms = [f"{b}#{version[b]}" for b in layer.bottom]
            for j, top in enumerate(layer.top):
                if version[top] and (j >= len(layer.bottom) or layer.bottom[j] != top):
                    raise UsageError(f"layer {layer.name!r} writes blob {top!r}, which {writer[top]!r} already wrote: "
                                     "Caffe refuses a top made by two layers unless one works in place (top = its "
                                     "bottom); give it a top of its own")
                version[top] += 1
                writer[top] = layer.name
            if kind in INPUT_LAYERS:
                declared = _input_shapes(layer, kind)
                inputs += list(layer.top)
                shapes += [declared[min(i, len(declared) - 1)] if declared else [] for i in range(len(layer.top))]
                sources += [f"{kind} {layer.name!r}"] * len(layer.top)
                continue
            param_field = _PARAM_FIELD.get(kind)
            param = getattr(layer, param_field) if param_field else None
            node = Layer(layer.name, kind, bottoms, [f"{t}#{version[t]}" for t in layer.top], param,
                         blobs.get(layer.name, []))
            if node.name in self.by_name:
                raise UsageError(f"two layers are named {node.name!r}; Caffe matches weights by layer name")
            self.layers.append(node)
            self.by_name[node.name] = node
            in_place += [(node, b) for j, b in enumerate(bottoms) if j < len(layer.top) and layer.top[j] == layer.bottom[j]]
        if len(inputs) != 1:
            raise UsageError(f"the net has {len(inputs)} inputs ({', '.join(inputs) or 'none'}); a RetinaNet has one "
                             "(an Input or DummyData layer, or input: with input_shape)")
        self.input = f"{inputs[0]}#1"
        self.input_source = f"{sources[0]} {inputs[0]!r}" if sources[0] == "the net's input" else sources[0]
        self.input_shape = shapes[0] if shapes else []
        if self.input_shape and (len(self.input_shape) != 4 or self.input_shape[1] != 3):
            raise UsageError(f"{self.input_source} is declared {' x '.join(map(str, self.input_shape))}; a RetinaNet "
                             "reads N x 3 x H x W images")
        unknown = sorted(set(blobs) - set(self.by_name))
        if unknown:
            raise UsageError(f"the caffemodel has weights for {len(unknown)} layers the prototxt lacks: "
                             f"{', '.join(unknown[:5])}")
        self.consumers: dict[str, list[Layer]] = defaultdict(list)
        for node in self.layers:
            for b in node.bottoms:
                self.consumers[b].append(node)
        for node, blob in in_place:
            others = [r.name for r in self.consumers[blob] if r is not node]
            if others:
                raise UsageError(f"layer {node.name!r} works in place on {blob.split('#')[0]!r}, which "
                                 f"{', '.join(map(repr, others))} also read before it: Caffe's Net stops on this (the "
                                 f"in-place top is then 'produced by multiple sources'); give {node.name!r} a top of "
                                 "its own")
        self.visited: set[str] = set()

    # ------------------------------------------------------------------ lookups that mark layers visited

    def layer(self, name: str, kind: str, bottom: str | None = None) -> Layer:
        """The layer `name` of type `kind`, reading `bottom` when given."""
        node = self.by_name.get(name)
        if node is None:
            raise UsageError(f"no layer named {name!r} (the PyTorch module's name with '.' -> '_')")
        if node.type != kind:
            raise UsageError(f"layer {name!r} is a {node.type}, expected a {kind}")
        if bottom is not None and node.bottoms != [bottom]:
            raise UsageError(f"layer {name!r} reads {self.blob_name(node.bottoms)}, expected {self.blob_name([bottom])}")
        self.visited.add(name)
        return node

    def consumer(self, blob: str, kind: str, what: str) -> Layer:
        """The one layer of type `kind` that reads `blob`."""
        found = [n for n in self.consumers[blob] if n.type == kind]
        if len(found) != 1:
            raise UsageError(f"expected one {kind} reading {self.blob_name([blob])} ({what}), found {len(found)}")
        self.visited.add(found[0].name)
        return found[0]

    def eltwise_sum(self, a: str, b: str, what: str) -> str:
        """The output of the Eltwise SUM (coefficients 1) of blobs a and b."""
        node = self.consumer(a, "Eltwise", what)
        p = node.param
        if sorted(node.bottoms) != sorted([a, b]) or p.operation != 1 or any(c != 1.0 for c in p.coeff):
            raise UsageError(f"layer {node.name!r} ({what}) must be an Eltwise SUM of {self.blob_name([a, b])}")
        return node.tops[0]

    def relu(self, blob: str, what: str) -> str:
        node = self.consumer(blob, "ReLU", what)
        if node.param.negative_slope != 0.0:
            raise UsageError(f"layer {node.name!r} is a leaky ReLU (negative_slope {node.param.negative_slope})")
        return node.tops[0]

    def norms(self, blob: str, bias: np.ndarray | None, channels: int) -> tuple[str, Affine]:
        """Follow the BatchNorm / Scale layers that are the only readers of `blob`: their output
        and the folded affine (float64), starting from a conv bias (or 0)."""
        scale = np.ones(channels)
        shift = np.zeros(channels) if bias is None else bias.astype(np.float64).reshape(-1)
        names = []
        while len(readers := self.consumers[blob]) == 1 and readers[0].type in ("BatchNorm", "Scale"):
            node = readers[0]
            self.visited.add(node.name)
            names.append(node.name)
            if node.type == "BatchNorm":
                mean, var = self._batch_norm(node, channels)
                inv = 1.0 / np.sqrt(var + float(node.param.eps))
                scale, shift = scale * inv, (shift - mean) * inv
            else:
                gamma, beta = self._scale(node, channels)
                scale, shift = scale * gamma, shift * gamma + beta
            blob = node.tops[0]
        return blob, Affine(scale, shift, names)

    def _batch_norm(self, node: Layer, channels: int) -> tuple[np.ndarray, np.ndarray]:
        if node.param.HasField("use_global_stats") and not node.param.use_global_stats:
            raise UsageError(f"layer {node.name!r}: BatchNorm with use_global_stats false uses batch statistics")
        if len(node.blobs) != 3:
            raise UsageError(f"layer {node.name!r}: BatchNorm needs 3 blobs (mean, variance, factor), has {len(node.blobs)}")
        mean, var, factor = (b.astype(np.float64).reshape(-1) for b in node.blobs)
        f = 0.0 if factor[0] == 0 else 1.0 / factor[0]  # batch_norm_layer.cpp: a zero factor means zero
        if mean.size != channels or var.size != channels:
            raise UsageError(f"layer {node.name!r}: {mean.size} statistics for {channels} channels")
        return mean * f, var * f

    def _scale(self, node: Layer, channels: int) -> tuple[np.ndarray, np.ndarray]:
        p = node.param
        if len(node.bottoms) != 1 or p.axis != 1 or p.num_axes != 1:
            raise UsageError(f"layer {node.name!r}: only a learned per-channel Scale (axis 1, num_axes 1) is supported")
        want = 2 if p.bias_term else 1
        if len(node.blobs) != want:
            raise UsageError(f"layer {node.name!r}: Scale with bias_term {p.bias_term} needs {want} blobs, "
                             f"has {len(node.blobs)}")
        gamma = node.blobs[0].astype(np.float64).reshape(-1)  # stored (C,) or legacy (1, 1, 1, C)
        beta = node.blobs[1].astype(np.float64).reshape(-1) if p.bias_term else np.zeros(channels)
        if gamma.size != channels or beta.size != channels:
            raise UsageError(f"layer {node.name!r}: {gamma.size} scales for {channels} channels")
        return gamma, beta

    def unvisited(self) -> list[str]:
        return [n.name for n in self.layers if n.name not in self.visited]

    @staticmethod
    def blob_name(ids: list[str]) -> str:
        return ", ".join(repr(i.split("#")[0]) for i in ids) or "nothing"


def window(param: Any, name: str) -> tuple[int, int, int]:
    """(kernel, stride, pad) of a square 2-D Convolution/Deconvolution/Pooling, refusing what differs per axis."""
    if param.DESCRIPTOR.name == "PoolingParameter":
        k = param.kernel_size if param.HasField("kernel_size") else param.kernel_h
        kw = param.kernel_size if param.HasField("kernel_size") else param.kernel_w
        s = param.stride_h if param.HasField("stride_h") else param.stride
        sw = param.stride_w if param.HasField("stride_w") else param.stride
        p = param.pad_h if param.HasField("pad_h") else param.pad
        pw = param.pad_w if param.HasField("pad_w") else param.pad
        if param.global_pooling:
            raise UsageError(f"layer {name!r}: global pooling is not part of a RetinaNet")
    else:
        if param.dilation and any(d != 1 for d in param.dilation):
            raise UsageError(f"layer {name!r}: dilated convolution is not supported")
        if param.axis != 1:
            raise UsageError(f"layer {name!r}: convolution over axis {param.axis} is not supported")
        ks, ss, ps = list(param.kernel_size), list(param.stride) or [1], list(param.pad) or [0]
        if param.HasField("kernel_h") or param.HasField("stride_h") or param.HasField("pad_h") or max(
                len(ks), len(ss), len(ps)) > 1:
            raise UsageError(f"layer {name!r}: per-axis kernel/stride/pad are not supported (square 2-D only)")
        if not ks:
            raise UsageError(f"layer {name!r} has no kernel_size")
        k, kw, s, sw, p, pw = ks[0], ks[0], ss[0], ss[0], ps[0], ps[0]
    if (k, s, p) != (kw, sw, pw):
        raise UsageError(f"layer {name!r}: different kernel, stride or pad per axis is not supported")
    return int(k), int(s), int(p)
