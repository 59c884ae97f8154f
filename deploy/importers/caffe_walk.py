"""Walking a Caffe net (importers.caffe_graph) along the RetinaNet structure: each conv found by name
(importers.caffe_names: the canonical name or an alias) and by the blob it reads, its blobs checked
and stored under our state-dict key, with its norm layers folded into an affine."""

from __future__ import annotations

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.importers import caffe_names
from retinanet_trt.importers.caffe_graph import Affine, CaffeGraph, Layer, window


class Walk:
    """Walks one net along the RetinaNet structure, collecting our state dict."""

    def __init__(self, graph: CaffeGraph) -> None:
        self.g = graph
        self.sd: dict[str, np.ndarray] = {}
        self.pairs: list[tuple[str, str]] = []  # (caffe layer/blob, our key)
        self.aliases: list[tuple[str, str]] = []  # (canonical name, the port's spelling)

    def _store(self, key: str, value: np.ndarray, source: str) -> None:
        self.sd[key] = value
        self.pairs.append((source, key))

    def find(self, template: str, kind: str, bottom: str | None, what: str, **fields: object) -> Layer:
        """The layer spelling `template` (canonical name or an alias) of type `kind`; with `bottom`,
        the one reading it when several spellings exist."""
        names = caffe_names.spellings(template, **fields)
        present = [self.g.by_name[n] for n in names if n in self.g.by_name]
        typed = [n for n in present if n.type == kind]
        if len(typed) > 1 and bottom is not None:
            typed = [n for n in typed if n.bottoms == [bottom]] or typed
        if not typed:
            wrong = "".join(f"; {n.name!r} is of type {n.type}" for n in present)
            raise UsageError(f"no {kind} layer for {what}: expected one named {' or '.join(names)}{wrong} (the "
                             "PyTorch module's name with '.' -> '_', or an alias: rename the layer, or add its "
                             "spelling to ALIASES in importers/caffe_names.py)")
        if len(typed) > 1:
            raise UsageError(f"layers {', '.join(repr(n.name) for n in typed)} could each be {what}; keep one")
        if typed[0].name != names[0]:
            self.aliases.append((names[0], typed[0].name))
        return typed[0]

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

    def conv(self, layer: str | Layer, bottom: str | None, key: str, stride: int, norm: bool) -> tuple[Layer, str]:
        """Our conv `key` from a Caffe layer (or its name): (the layer, its output blob after any norm layers)."""
        node = self.g.layer(layer if isinstance(layer, str) else layer.name, "Convolution", bottom)
        name = node.name
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

    def upsample(self, top: str, level: int, channels: int) -> tuple[str, Layer]:
        """The top-down Deconvolution reading `top` (k4 s2 p1, any group, its stored weights): (its
        output blob, the layer)."""
        node = self.g.consumer(top, "Deconvolution", f"the top-down upsampling to P{level}")
        weight, bias = self._conv_weights(node, "Deconvolution")
        k, s, p = window(node.param, node.name)
        group = node.param.group
        if (k, s, p, node.param.num_output) != (4, 2, 1, channels) or not group or channels % group:
            raise UsageError(f"layer {node.name!r}: k{k} s{s} p{p} num_output {node.param.num_output} group {group}; "
                             f"the FPN upsampling must be a x2 Deconvolution k4 s2 p1 with num_output {channels} and a "
                             "group dividing it")
        if weight.shape != (channels, channels // group, 4, 4):
            raise UsageError(f"layer {node.name!r}: weight blob of shape {list(weight.shape)}, expected "
                             f"{[channels, channels // group, 4, 4]} for group {group}")
        if bias is not None and np.any(bias != 0):
            raise UsageError(f"layer {node.name!r}: the upsampling Deconvolution has a non-zero bias; set bias_term "
                             "false (the model's upsampling has none)")
        self._store(f"fpn.upsample{level}.weight", weight, f"{node.name} blob 0")
        return node.tops[0], node
