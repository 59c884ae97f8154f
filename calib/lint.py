"""TensorRT rules for explicitly quantized (Q/DQ) ONNX files, checked on every file the tool writes.

TensorRT quantizes symmetrically to signed INT8, so every zero point must be an int8 0; weights
are quantized per output channel (axis 0 of a Conv weight) and activations per tensor; a
DequantizeLinear must dequantize int8 (TensorRT rejects the int32 bias DQ that ONNX Runtime writes
by default: "only activation types allowed as input to this layer"); per-channel Q/DQ needs
opset >= 13; and every QuantizeLinear must feed only DequantizeLinear nodes, so no Q/DQ is left
half a pair.
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
        is_weight = node.op_type == _DQ and source in consts
        if is_weight:
            weight = consts[source]
            if weight.dtype != np.int8:
                problems.append(f"{label}: dequantizes {weight.dtype} {source!r}; TensorRT accepts int8 only "
                                "(keep biases in float: QuantizeBias=False)")
            elif weight.ndim >= 2:
                if scale is not None and (scale.ndim != 1 or scale.shape[0] != weight.shape[0] or axis != 0):
                    problems.append(f"{label}: weight {source!r} {list(weight.shape)} has scale shape "
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
                parent = producers.get(source)
                if parent is None or parent.op_type != _Q:
                    problems.append(f"{label}: input {source!r} comes from neither a QuantizeLinear nor an int8 weight (dangling)")
                elif scale is not None and (s2 := consts.get(parent.input[1])) is not None and not np.array_equal(scale, s2):
                    problems.append(f"{label}: scale differs from its QuantizeLinear {parent.name!r}")
            if not consumers.get(node.output[0]) and node.output[0] not in graph_outputs:
                problems.append(f"{label}: output is unused (dangling DequantizeLinear)")
    return LintResult(not problems, problems, len(qdq))


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
