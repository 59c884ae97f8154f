"""Where the Q/DQ pairs go: TensorRT's Q/DQ layer-placement recommendations, planned on the FP32 graph.

TensorRT's developer guide ("Q/DQ layer-placement recommendations") asks for:
- the inputs of weighted ops quantized: a Conv's activation input (per tensor) and its weight (per
  output channel);
- no Q/DQ on outputs that TensorRT fuses into their consumer: a Conv's output feeding its ReLU or
  its residual Add stays float, as does the Add's output feeding its ReLU (Conv + Add + ReLU is one
  INT8 kernel only when nothing sits between them);
- at a residual Add, only the input that does not come from the Conv TensorRT fuses with the Add
  (the skip branch) is quantized;
- no Q/DQ pair on a ReLU that fuses with its Conv.

More, taken from NVIDIA Model Optimizer (ModelOpt), the executable reference this plan is
compared with (benchmarks/modelopt_compare.py): a Conv with too few channels for TensorRT's INT8
kernels stays float (int8_conv_supported; RetinaNet R50 and the demo have none); a MaxPool or nearest Resize whose output is
quantized reads its input through a Q/DQ too, so TensorRT moves INT8 data through it (both only
copy values: with max ranges the two scales are equal); a ReLU whose input is quantized for another
consumer anyway (so it cannot fuse with the conv that produces it: RetinaNet's P6 feeds the head
and the ReLU before P7) reads that same Q/DQ. Everything else (Relu inputs straight from a conv,
Add outputs, the graph's outputs) gets no Q/DQ.

A plan is a list of `Site`s: (node, input index) pairs that read a quantized tensor. `plan_tensorrt`
makes one for an FP32 graph, `read_sites` reads the one any Q/DQ file holds (this tool's, ONNX
Runtime's, ModelOpt's), `differences` compares two, and `insert_qdq` writes the Q/DQ nodes from
calibrated ranges with ONNX Runtime's own scale arithmetic (symmetric int8, [-127, 127]).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from retinanet_trt.errors import UsageError

ACTIVATION, WEIGHT = "activation", "weight"
Q, DQ = "QuantizeLinear", "DequantizeLinear"
# Weighted ops whose inputs are quantized. RetinaNet has only Conv; a ConvTranspose (Caffe's bilinear
# upsampling deconvolution) stays float: its weight's output channels are on axis 1.
WEIGHTED_OPS = ("Conv",)
# Ops that only move values: TensorRT runs them on INT8 data when their input is quantized.
COMMUTING_OPS = ("MaxPool", "Resize")


@dataclass(frozen=True, order=True)
class Site:
    """One quantized input: node `node` (op `op`) reads FP32 tensor `tensor` through a Q/DQ at input
    `index`. kind: 'activation' or 'weight'; rule: why the plan put it there ('' when read from a file)."""

    node: str
    index: int
    kind: str
    tensor: str = ""
    op: str = ""
    rule: str = ""

    @property
    def key(self) -> tuple[str, int, str]:
        """What two placements are compared on: tensor names may differ (ModelOpt copies shared weights)."""
        return (self.node, self.index, self.kind)

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op": self.op, "input": self.index, "kind": self.kind, "tensor": self.tensor,
                **({"rule": self.rule} if self.rule else {})}


@dataclass
class _Graph:
    """Producers, consumers and constants of a graph, by tensor name."""

    model: onnx.ModelProto

    def __post_init__(self) -> None:
        graph = self.model.graph
        self.inits = {t.name: t for t in graph.initializer}
        self.consts = set(self.inits) | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
        self.producer: dict[str, onnx.NodeProto] = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)

    def ancestors(self, node: onnx.NodeProto) -> dict[str, int]:
        """Node name -> shortest distance upwards from `node` (itself at 0)."""
        dist = {node.name: 0}
        frontier = [node]
        while frontier:
            nxt = []
            for cur in frontier:
                for name in cur.input:
                    parent = self.producer.get(name)
                    if parent is not None and parent.name not in dist:
                        dist[parent.name] = dist[cur.name] + 1
                        nxt.append(parent)
            frontier = nxt
        return dist


def is_nearest_resize(node: onnx.NodeProto) -> bool:
    return node.op_type == "Resize" and next((a.s.decode() for a in node.attribute if a.name == "mode"), "nearest") == "nearest"


def _commutes(node: onnx.NodeProto) -> bool:
    return node.op_type == "MaxPool" or is_nearest_resize(node)


def fused_add_input(g: _Graph, add: onnx.NodeProto, convs: set[str]) -> int | None:
    """The input of a residual Add that TensorRT fuses with the Conv producing it, or None when the
    Add is not a residual Add of a conv in `convs`.

    That conv's output must feed only the Add (else the output is needed on its own). When both
    inputs come from such convs (a ResNet block with a projection shortcut), the fused one is the
    main path: the one farther from the two branches' lowest common ancestor (ModelOpt's rule too)."""
    if add.op_type != "Add" or len(add.input) != 2 or any(i in g.consts or i not in g.producer for i in add.input):
        return None
    candidates = [i for i, name in enumerate(add.input)
                  if (p := g.producer[name]).op_type in WEIGHTED_OPS and p.name in convs and len(g.consumers[name]) == 1]
    if len(candidates) < 2:
        return candidates[0] if candidates else None
    up0, up1 = (g.ancestors(g.producer[name]) for name in add.input)
    common = set(up0) & set(up1)
    if not common:
        return 0
    lca = min(common, key=lambda n: (up0[n] + up1[n], up0[n]))
    return 0 if up0[lca] >= up1[lca] else 1


def int8_conv_supported(node: onnx.NodeProto, weight_shape: list[int], reads_graph_input: bool) -> bool:
    """Whether TensorRT has INT8 kernels for this Conv's channel counts (ModelOpt's rule, from
    find_nodes_from_convs_to_exclude): 16 or more input and output channels; fewer only for a
    plain conv with a channel count that is a multiple of 8, a square kernel, and 16 or more
    channels on the other side (or the network input), or for a grouped conv with output channels
    a multiple of 8 and kernels of at least 3."""
    out_ch, in_ch = weight_shape[0], weight_shape[1]
    if out_ch >= 16 and in_ch >= 16:
        return True
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    group = attrs.get("group", 1)
    kernel = list(attrs.get("kernel_shape", weight_shape[2:]))
    if group == 1:
        return ((out_ch % 8 == 0 or in_ch % 8 == 0) and (reads_graph_input or out_ch >= 16 or in_ch >= 16)
                and len(set(kernel)) == 1)
    return out_ch % 8 == 0 and all(k >= 3 for k in kernel)


def plan_tensorrt(model: onnx.ModelProto, quantized: Iterable[str]) -> list[Site]:
    """The Q/DQ sites TensorRT's placement rules give when the nodes named in `quantized` run in INT8.

    A Conv in `quantized` (with a constant weight, and channel counts TensorRT has INT8 kernels
    for: int8_conv_supported) gets its activation input and weight quantized; an
    Add in `quantized` whose fused conv is quantized gets its skip input quantized; a MaxPool or
    nearest Resize in `quantized` whose output is quantized gets its input quantized."""
    g = _Graph(model)
    chosen = set(quantized)
    sites: list[Site] = []
    graph_inputs = {i.name for i in model.graph.input}
    convs = {n.name for n in model.graph.node
             if n.op_type in WEIGHTED_OPS and n.name in chosen and len(n.input) > 1 and n.input[1] in g.inits
             and n.input[0] not in g.consts
             and int8_conv_supported(n, list(g.inits[n.input[1]].dims), n.input[0] in graph_inputs)}
    for node in model.graph.node:
        if node.name in convs:
            sites.append(Site(node.name, 0, ACTIVATION, node.input[0], node.op_type, "conv input"))
            sites.append(Site(node.name, 1, WEIGHT, node.input[1], node.op_type, "conv weight"))
        elif node.op_type == "Add" and node.name in chosen and (fused := fused_add_input(g, node, convs)) is not None:
            skip = 1 - fused
            sites.append(Site(node.name, skip, ACTIVATION, node.input[skip], "Add", "residual input"))
    quantized_tensors = {s.tensor for s in sites if s.kind == ACTIVATION}
    for node in reversed(model.graph.node):  # outputs before inputs: chains of pools/resizes propagate
        if (node.op_type in COMMUTING_OPS and node.name in chosen and _commutes(node)
                and node.output[0] in quantized_tensors and node.input[0] not in g.consts):
            sites.append(Site(node.name, 0, ACTIVATION, node.input[0], node.op_type, "commuting input"))
            quantized_tensors.add(node.input[0])
    for node in model.graph.node:  # a ReLU on a tensor quantized for another consumer: no fusion to keep
        if node.op_type == "Relu" and node.name in chosen and node.input[0] in quantized_tensors:
            sites.append(Site(node.name, 0, ACTIVATION, node.input[0], "Relu", "shared input"))
    return sites


def read_sites(model: onnx.ModelProto) -> list[Site]:
    """The quantized inputs of a Q/DQ file: every non-Q/DQ node input fed by a DequantizeLinear.

    A weight is a DequantizeLinear of a constant (an int8 initializer, as this tool and ONNX Runtime
    write it) or of a QuantizeLinear of a constant (float weights quantized in the graph, as ModelOpt
    writes them); tensor is the FP32 tensor before the Q/DQ pair."""
    g = _Graph(model)
    sites: list[Site] = []
    for node in model.graph.node:
        if node.op_type in (Q, DQ):
            continue
        for index, name in enumerate(node.input):
            dq = g.producer.get(name)
            if dq is None or dq.op_type != DQ:
                continue
            source = dq.input[0]
            q = g.producer.get(source)
            if source in g.consts:
                sites.append(Site(node.name, index, WEIGHT, source, node.op_type))
            elif q is not None and q.op_type == Q:
                kind = WEIGHT if q.input[0] in g.consts else ACTIVATION
                sites.append(Site(node.name, index, kind, q.input[0], node.op_type))
            else:
                sites.append(Site(node.name, index, ACTIVATION, source, node.op_type))
    return sites


def differences(ours: Iterable[Site], theirs: Iterable[Site]) -> list[dict[str, Any]]:
    """Sites in one placement and not the other, sorted: each a Site dict plus 'only_in' ('ours'/'theirs')."""
    a = {s.key: s for s in ours}
    b = {s.key: s for s in theirs}
    rows = [{**a[k].to_dict(), "only_in": "ours"} for k in sorted(a.keys() - b.keys())]
    rows += [{**b[k].to_dict(), "only_in": "theirs"} for k in sorted(b.keys() - a.keys())]
    return sorted(rows, key=lambda r: (r["node"], r["input"], r["kind"]))


def explained_differences(ours: list[Site], theirs: list[Site], model: onnx.ModelProto) -> list[dict[str, Any]]:
    """differences(ours, theirs), each row with 'explanation' (an EXPLANATIONS key or None) and the
    node's 'output' tensor in `model` (the FP32 graph or either file)."""
    outputs = {n.name: n.output[0] for n in model.graph.node if n.output}
    rows = []
    for row in differences(ours, theirs):
        row["output"] = outputs.get(row["node"], "")
        row["explanation"] = explain(row, ours)
        rows.append(row)
    return rows


# Why trt-calib's default placement and ModelOpt's differ (docs/precision.md, "Q/DQ placement").
EXPLANATIONS = {
    "predictor": "trt-calib keeps the 10 class/box predictor convs in FP32 by default (their outputs are the logits "
                 "and box deltas, read directly by the post-process); ModelOpt quantizes their input and weight. "
                 "With --quantize-predictors the placements agree.",
    "pool-before-float": "ModelOpt quantizes every MaxPool's input; trt-calib only a MaxPool whose output is "
                         "quantized. Here nothing after the pool is INT8 (its convs have too few channels), so the "
                         "pair would only buy an INT8 max pool whose result is dequantized at once.",
}


def explain(difference: dict[str, Any], ours: list[Site]) -> str | None:
    """The EXPLANATIONS key of one row of differences(ours, modelopt), or None when unexplained."""
    from retinanet_trt.calib.select import is_predictor

    if difference["only_in"] == "theirs" and is_predictor(difference["node"]):
        return "predictor"
    if difference["only_in"] == "theirs" and difference["op"] == "MaxPool" and difference["input"] == 0:
        quantized = {s.tensor for s in ours if s.kind == ACTIVATION}
        return None if difference.get("output") in quantized else "pool-before-float"
    return None


def float_view(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph of a Q/DQ file with its Q/DQ nodes taken out: every input fed through a Q/DQ pair
    (or a weight's DequantizeLinear) reads the tensor before it. Node names are kept, so a plan made
    on the view names the file's nodes."""
    g = _Graph(model)
    origin: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == DQ:
            q = g.producer.get(node.input[0])
            origin[node.output[0]] = q.input[0] if q is not None and q.op_type == Q else node.input[0]
    view = onnx.ModelProto()
    view.CopyFrom(model)
    kept = [n for n in view.graph.node if n.op_type not in (Q, DQ)]
    for node in kept:
        node.input[:] = [origin.get(name, name) for name in node.input]
    del view.graph.node[:]
    view.graph.node.extend(kept)
    return view


# ------------------------------------------------------------------------------- writing Q/DQ

def _range(ranges: dict[str, Any], tensor: str) -> tuple[np.ndarray, np.ndarray]:
    entry = ranges.get("data", {}).get(tensor)
    if entry is None:
        raise UsageError(f"no calibration range for tensor {tensor!r}: the ranges were made for another model; "
                         "delete the calibration cache to recalibrate")
    lo, hi = (entry[k]["data"] if isinstance(entry[k], dict) else entry[k] for k in ("lowest", "highest"))
    return np.float32(np.min(lo)), np.float32(np.max(hi))


def activation_qparams(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale float32, zero point int8 0) for a tensor in [lo, hi]: ONNX Runtime's symmetric int8 rule,
    max(|lo|, |hi|) / 127."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.INT8, symmetric=True)
    zero, scale = compute_scale_zp(lo, hi, qmin, qmax, symmetric=True)
    return np.asarray(scale, np.float32).reshape(()), np.zeros((), np.int8) + np.asarray(zero, np.int8)


def quantize_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, float32 scale per output channel): ONNX Runtime's per-channel symmetric rule on axis 0."""
    from onnxruntime.quantization.quant_utils import quantize_data

    scales, quantized = [], []
    for channel in weight.astype(np.float32):
        _, scale, q = quantize_data(channel.flatten(), TensorProto.INT8, True)
        scales.append(np.float32(scale))
        quantized.append(np.asarray(q, np.int8).reshape(channel.shape))
    return np.stack(quantized), np.asarray(scales, np.float32)


def insert_qdq(model: onnx.ModelProto, sites: list[Site], ranges: dict[str, Any]) -> onnx.ModelProto:
    """A copy of the FP32 `model` with Q/DQ at `sites` (from plan_tensorrt), scales from `ranges`
    (ONNX Runtime's TensorsData dict, as the calibration cache stores it).

    One Q/DQ pair per activation tensor, shared by all its quantized consumers; one int8 initializer
    and DequantizeLinear per weight, shared by the convs that quantize it (the head's weights are
    shared over FPN levels); a consumer not in `sites` keeps reading the float tensor. Names follow
    ONNX Runtime's (`T_QuantizeLinear`, `W_quantized`, `..._DequantizeLinear_Output`)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    g = _Graph(out)
    nodes = {n.name: n for n in graph.node}
    if len(nodes) != len(graph.node):
        names = [n.name for n in graph.node]
        dup = sorted({n for n in names if names.count(n) > 1})
        raise UsageError(f"node names are not unique ({', '.join(dup[:3])}): Q/DQ sites cannot be placed")
    by_tensor: dict[tuple[str, str], list[Site]] = defaultdict(list)
    for site in sites:
        if site.node not in nodes:
            raise UsageError(f"Q/DQ site on unknown node {site.node!r}")
        by_tensor[(site.kind, site.tensor)].append(site)

    after: dict[str, list[onnx.NodeProto]] = defaultdict(list)  # producer output -> Q/DQ nodes to follow it
    head: list[onnx.NodeProto] = []  # Q/DQ of graph inputs and weights
    new_inits: list[onnx.TensorProto] = []
    for (kind, tensor), users in sorted(by_tensor.items()):
        if kind == WEIGHT:
            weight = numpy_helper.to_array(g.inits[tensor])
            q, scale = quantize_weight(weight)
            qname = f"{tensor}_quantized"
            new_inits += [numpy_helper.from_array(q, qname), numpy_helper.from_array(scale, f"{tensor}_scale"),
                          numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{tensor}_zero_point")]
            dq_out = f"{tensor}_DequantizeLinear_Output"
            head.append(helper.make_node(DQ, [qname, f"{tensor}_scale", f"{tensor}_zero_point"], [dq_out],
                                         name=f"{tensor}_DequantizeLinear", axis=0))
        else:
            scale, zero = activation_qparams(*_range(ranges, tensor))
            new_inits += [numpy_helper.from_array(scale, f"{tensor}_scale"),
                          numpy_helper.from_array(zero, f"{tensor}_zero_point")]
            q_out, dq_out = f"{tensor}_QuantizeLinear_Output", f"{tensor}_DequantizeLinear_Output"
            pair = [helper.make_node(Q, [tensor, f"{tensor}_scale", f"{tensor}_zero_point"], [q_out],
                                     name=f"{tensor}_QuantizeLinear"),
                    helper.make_node(DQ, [q_out, f"{tensor}_scale", f"{tensor}_zero_point"], [dq_out],
                                     name=f"{tensor}_DequantizeLinear")]
            (after[tensor] if tensor in g.producer else head).extend(pair)
        for site in users:
            nodes[site.node].input[site.index] = dq_out
    ordered = list(head)
    for node in graph.node:
        ordered.append(node)
        for name in node.output:
            ordered.extend(after.get(name, []))
    del graph.node[:]
    graph.node.extend(ordered)
    used = {name for n in graph.node for name in n.input}
    kept = [t for t in graph.initializer if t.name in used]  # a float weight no FP32 node reads any more
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    return out
