"""TensorRT rules for explicitly quantized (Q/DQ) ONNX files, checked on every file the tool writes.

TensorRT quantizes symmetrically to signed INT8, so every zero point must be an int8 0; weights
are quantized per output channel (axis 0 of a Conv weight) and activations per tensor; a
DequantizeLinear must dequantize int8 (TensorRT rejects the int32 bias DQ that ONNX Runtime writes
by default: "only activation types allowed as input to this layer"); per-channel Q/DQ needs
opset >= 13; and every QuantizeLinear must feed only DequantizeLinear nodes, so no Q/DQ is left
half a pair.

Placement (TensorRT's Q/DQ layer-placement recommendations, calib/placement.py), each problem
naming the node:
- a Conv quantizes both its activation input and its weight, or neither;
- no Q/DQ between a ReLU and the Conv or Add it fuses with (the pair would block the fusion);
- at a residual Add, the input from the Conv TensorRT fuses with the Add is float and the skip
  input is quantized;
- every activation Q/DQ feeds an op that TensorRT runs on INT8 data (Conv, Add, MaxPool, Resize,
  Relu); one feeding only other ops is an extra reformat.
Weights may be int8 initializers (this tool, ONNX Runtime) or float constants quantized in the
graph (a QuantizeLinear of a constant, as ModelOpt writes them).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

MIN_OPSET = 13
_Q, _DQ = "QuantizeLinear", "DequantizeLinear"
# Ops TensorRT runs on INT8 data: a Q/DQ pair is worth its cost only in front of one of them.
INT8_CONSUMERS = ("Conv", "Add", "MaxPool", "Resize", "Relu")


@dataclass
class LintResult:
    """passed: no problems; problems: one line each, naming the node; qdq_nodes: Q plus DQ count."""

    passed: bool
    problems: list[str] = field(default_factory=list)
    qdq_nodes: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"passed": self.passed, "problems": self.problems, "qdq_nodes": self.qdq_nodes}


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values by tensor name."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def lint_qdq(model: onnx.ModelProto) -> LintResult:
    """Check a Q/DQ model against TensorRT's rules; a model without Q/DQ nodes passes trivially."""
    graph = model.graph
    qdq = [n for n in graph.node if n.op_type in (_Q, _DQ)]
    if not qdq:
        return LintResult(True, [], 0)
    problems: list[str] = []
    opset = _opset(model)
    if opset < MIN_OPSET:
        problems.append(f"opset {opset} < {MIN_OPSET}: per-channel Q/DQ (the axis attribute) needs opset >= {MIN_OPSET}")
    consts = _constants(model)
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    producers = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}

    for node in qdq:
        label = f"{node.op_type} {node.name or node.output[0]!r}"
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        scale = consts.get(node.input[1]) if len(node.input) > 1 else None
        zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None:
            problems.append(f"{label}: scale is not a constant")
        elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            problems.append(f"{label}: scale has zero, negative or non-finite values")
        if zero is None:
            # Without a zero point, QuantizeLinear produces uint8 (ONNX default): not TensorRT's int8.
            problems.append(f"{label}: no constant zero point (ONNX then uses uint8); TensorRT needs int8 zero points of 0")
        else:
            if zero.dtype != np.int8:
                problems.append(f"{label}: zero point is {zero.dtype}, TensorRT needs int8")
            if np.any(zero != 0):
                problems.append(f"{label}: zero point is not 0 (asymmetric); TensorRT quantizes symmetrically")
        source = node.input[0]
        parent = producers.get(source)
        # A weight: an int8 constant dequantized, or a float constant quantized in the graph (and its DQ).
        float_weight = source if node.op_type == _Q and source in consts else (
            parent.input[0] if node.op_type == _DQ and parent is not None and parent.op_type == _Q
            and parent.input[0] in consts else None)
        is_weight = (node.op_type == _DQ and source in consts) or float_weight is not None
        if is_weight:
            weight = consts[float_weight] if float_weight is not None else consts[source]
            if float_weight is None and weight.dtype != np.int8:
                problems.append(f"{label}: dequantizes {weight.dtype} {source!r}; TensorRT accepts int8 only "
                                "(keep biases in float: QuantizeBias=False)")
            elif weight.ndim >= 2:
                if scale is not None and (scale.ndim != 1 or scale.shape[0] != weight.shape[0] or axis != 0):
                    problems.append(f"{label}: weight {float_weight or source!r} {list(weight.shape)} has scale shape "
                                    f"{list(scale.shape)} on axis {axis}; TensorRT expects one scale per output channel (axis 0)")
        elif scale is not None and scale.size != 1:
            problems.append(f"{label}: activation scale has {scale.size} values; TensorRT quantizes activations per tensor")
        if node.op_type == _Q:
            users = consumers.get(node.output[0], [])
            if not users or node.output[0] in graph_outputs:
                problems.append(f"{label}: output is not dequantized (dangling QuantizeLinear)")
            others = sorted({u.op_type for u in users if u.op_type != _DQ})
            if others:
                problems.append(f"{label}: feeds {', '.join(others)} instead of DequantizeLinear only (dangling pair)")
        else:
            if not is_weight:
                if parent is None or parent.op_type != _Q:
                    problems.append(f"{label}: input {source!r} comes from neither a QuantizeLinear nor an int8 weight (dangling)")
                elif scale is not None and (s2 := consts.get(parent.input[1])) is not None and not np.array_equal(scale, s2):
                    problems.append(f"{label}: scale differs from its QuantizeLinear {parent.name!r}")
            users = consumers.get(node.output[0], [])
            if not users and node.output[0] not in graph_outputs:
                problems.append(f"{label}: output is unused (dangling DequantizeLinear)")
            elif not is_weight and not any(u.op_type in INT8_CONSUMERS for u in users):
                ops = sorted({u.op_type for u in users} | ({"graph output"} if node.output[0] in graph_outputs else set()))
                problems.append(f"{label}: feeds only {', '.join(ops)}, which TensorRT does not run in INT8: "
                                "the pair is an extra reformat; remove it")
    problems += lint_placement(model)
    return LintResult(not problems, problems, len(qdq))


def lint_placement(model: onnx.ModelProto) -> list[str]:
    """TensorRT's placement rules (module docstring) on a Q/DQ model; one problem per line, naming the node."""
    from retinanet_trt.calib.placement import WEIGHTED_OPS, _Graph, float_view, fused_add_input, read_sites

    quantized = {(s.node, s.index) for s in read_sites(model)}
    view = float_view(model)
    g = _Graph(view)
    problems: list[str] = []
    convs: set[str] = set()
    for node in view.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        act, weight = (node.name, 0) in quantized, (node.name, 1) in quantized
        if act and weight:
            convs.add(node.name)
        elif act:
            problems.append(f"{node.op_type} {node.name!r}: activation input is quantized but the weight is float; "
                            "TensorRT runs it in INT8 only with both quantized")
        elif weight:
            problems.append(f"{node.op_type} {node.name!r}: weight is quantized but activation input "
                            f"{node.input[0]!r} is float; TensorRT runs it in INT8 only with both quantized")
    for node in view.graph.node:
        if node.op_type == "Relu" and (node.name, 0) in quantized:
            src = node.input[0]
            parent = g.producer.get(src)
            if parent is not None and parent.op_type in ("Conv", "Add") and len(g.consumers[src]) == 1:
                problems.append(f"Relu {node.name!r}: Q/DQ on its input {src!r}, the output of {parent.op_type} "
                                f"{parent.name!r}, which TensorRT fuses with the ReLU; remove the pair")
        elif node.op_type == "Add" and (fused := fused_add_input(g, node, convs)) is not None:
            skip = 1 - fused
            conv = g.producer[node.input[fused]].name
            if (node.name, fused) in quantized:
                problems.append(f"Add {node.name!r}: input {node.input[fused]!r} from Conv {conv!r}, which TensorRT "
                                "fuses with the Add, is quantized; quantize only the skip input")
            if (node.name, skip) not in quantized:
                problems.append(f"Add {node.name!r}: skip input {node.input[skip]!r} is float; TensorRT fuses "
                                f"Conv {conv!r} + Add in INT8 only with a quantized skip input")
    return problems


def lint_file(path: str | Path) -> LintResult:
    """lint_qdq on a written file, plus what every precision must keep: a model that passes
    onnx.checker and float32 inputs and outputs (runners feed and read the same arrays)."""
    model = onnx.load(str(path))
    result = lint_qdq(model)
    problems = list(result.problems)
    try:
        onnx.checker.check_model(model, full_check=True)  # full: type checks too
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        problems.append(f"onnx.checker: {str(exc).splitlines()[0]}")
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            elem = value.type.tensor_type.elem_type
            if elem != onnx.TensorProto.FLOAT:
                problems.append(f"{kind} {value.name!r} is {onnx.TensorProto.DataType.Name(elem)}, not FLOAT")
    return LintResult(not problems, problems, result.qdq_nodes)
