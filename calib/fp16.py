"""FP16 as an ONNX-to-ONNX conversion (onnxconverter-common), FP32 kept where values can overflow.

TensorRT 11 has no FP16 builder flag: a strongly typed network runs each layer in the type the
ONNX file declares, so the conversion decides the precision. Inputs and outputs stay FP32 (Cast
nodes at the edges), so runners feed and read the same arrays for every precision.

What stays FP32:
- ops of onnxconverter-common's default block list (ML ops, TopK, NMS, Min/Max, ...), except
  Resize/Upsample: the FPN's nearest-neighbour upsampling copies values, exact in FP16, and
  blocking it would add four Casts per FPN level merge;
- with a calibration set, every node whose observed output magnitude exceeds FP16_SAFE_MAX.

layers_to_fp16 is the other direction, for the INT8 accuracy budget's --keep-as fp16: a few named
layers of a Q/DQ file computing in FP16, the rest of the file as it was.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnxconverter_common import float16

FP16_MAX = 65504.0
# 1/16 of FP16's largest value: headroom for inputs brighter or busier than the calibration set.
FP16_SAFE_MAX = FP16_MAX / 16
# Nearest-neighbour resampling only copies values, so it is exact in FP16.
_FP16_SAFE_OPS = {"Resize", "Upsample"}
OP_BLOCK_LIST = [op for op in float16.DEFAULT_OP_BLOCK_LIST if op not in _FP16_SAFE_OPS]


def tensor_peaks(ranges: dict[str, Any]) -> dict[str, float]:
    """Max |value| per tensor from ORT's TensorsData dict (as saved in the calibration cache): the
    observed peak where the calibration kept it ("observed_absmax": entropy and percentile ranges
    clip below it), else the range's ends (max ranges are the observed ones)."""
    observed = ranges.get("observed_absmax") or {}
    peaks: dict[str, float] = {}
    for name, entry in ranges.get("data", {}).items():
        lo, hi = entry["lowest"]["data"], entry["highest"]["data"]
        peaks[name] = max(float(observed.get(name, 0.0)), float(max(np.max(np.abs(lo)), np.max(np.abs(hi)))))
    return peaks


def overflow_nodes(model: onnx.ModelProto, peaks: dict[str, float], limit: float = FP16_SAFE_MAX) -> list[str]:
    """Names of nodes with an output whose observed magnitude exceeds `limit`."""
    return [n.name for n in model.graph.node if any(peaks.get(o, 0.0) > limit for o in n.output)]


def _has_nearest_only_resizes(model: onnx.ModelProto) -> bool:
    for node in model.graph.node:
        if node.op_type in _FP16_SAFE_OPS:
            mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "nearest")
            if mode != "nearest":
                return False
    return True


def convert_fp16(model: onnx.ModelProto, keep_fp32: list[str] | None = None) -> onnx.ModelProto:
    """FP16 copy of `model` with FP32 inputs/outputs; nodes named in keep_fp32 stay FP32."""
    block_ops = OP_BLOCK_LIST if _has_nearest_only_resizes(model) else list(float16.DEFAULT_OP_BLOCK_LIST)
    with warnings.catch_warnings():
        # The converter warns for every weight it clamps to the FP16 subnormal floor; the
        # parity figures in the report say whether that matters.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model,
            # Weights up to FP16's own maximum are representable; the converter's default (1e4)
            # would clamp weights that FP16 holds.
            max_finite_val=FP16_MAX,
            keep_io_types=True,
            op_block_list=block_ops,
            node_block_list=list(keep_fp32 or []),
        )
    _restore_fp32_resize_params(converted)
    _restore_fp32_outputs(converted)
    return converted


def _restore_fp32_outputs(model: onnx.ModelProto) -> None:
    """keep_io_types ends every graph output with a Cast to FP16 it then undoes, except behind a
    node kept FP32 (a predictor conv excluded by level): there the output would stay FLOAT16. Such a
    Cast reads an FP32 tensor, so it becomes a Cast to FP32 (an identity) and the output FP32 again."""
    casts = {n.output[0]: n for n in model.graph.node if n.op_type == "Cast"}
    for out in model.graph.output:
        if out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 or out.name not in casts:
            continue
        for attr in casts[out.name].attribute:
            if attr.name == "to":
                attr.i = onnx.TensorProto.FLOAT
        out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def _restore_fp32_resize_params(model: onnx.ModelProto) -> None:
    """Resize's roi and scales inputs are float32 in every opset; the converter turns the
    constants that feed them into float16, which makes the model invalid. Turn them back."""
    wanted = {name for n in model.graph.node if n.op_type in _FP16_SAFE_OPS for name in n.input[1:3] if name}
    for init in model.graph.initializer:
        if init.name in wanted and init.data_type == onnx.TensorProto.FLOAT16:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] in wanted:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == onnx.TensorProto.FLOAT16:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32)))
    for info in model.graph.value_info:
        if info.name in wanted and info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            info.type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def layers_to_fp16(model: onnx.ModelProto, layers: list[str], peaks: dict[str, float],
                   limit: float = FP16_SAFE_MAX) -> dict[str, str]:
    """Run the named float layers (Conv, ConvTranspose, Gemm, MatMul with a constant weight) of a
    Q/DQ or FP32 model in FP16, in place; return {layer: "fp16" | "fp32"}, what each computes in.

    Each converted layer gets its own FP16 copy of its weight and bias (a head conv shared over
    FPN levels may be quantized, or FP32, at the other levels), a Cast to FP16 on its activation
    input and a Cast back to FP32 on its output, so its neighbours (Q/DQ, ReLU, Add) see the
    FP32 tensors they saw before. A layer stays FP32 where FP16 cannot hold it: an observed input
    or output magnitude above `limit` (peaks: tensor_peaks of the calibration ranges), a weight
    above FP16_MAX, or an input that is not a float tensor the layer computes on."""
    inits = {t.name: t for t in model.graph.initializer}
    wanted = set(layers)
    classes: dict[str, str] = {}
    replaced: set[str] = set()
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.name not in wanted:
            nodes.append(node)
            continue
        names = [name for name in node.input[1:] if name]
        consts = [inits[name] for name in names if name in inits]
        fits = (len(names) >= 1 and len(consts) == len(names)
                and all(c.data_type == onnx.TensorProto.FLOAT for c in consts)
                and all(peaks.get(t, 0.0) <= limit for t in (node.input[0], node.output[0]))
                and all(float(np.max(np.abs(numpy_helper.to_array(c)), initial=0.0)) <= FP16_MAX for c in consts))
        classes[node.name] = "fp16" if fits else "fp32"
        if not fits:
            nodes.append(node)
            continue
        halves = []
        replaced.update(c.name for c in consts)
        for c in consts:
            half = numpy_helper.from_array(numpy_helper.to_array(c).astype(np.float16), f"{c.name}.{node.name}.fp16")
            model.graph.initializer.append(half)
            halves.append(half.name)
        x16, y16, y = f"{node.input[0]}.{node.name}.fp16", f"{node.output[0]}.fp16", node.output[0]
        nodes.append(onnx.helper.make_node("Cast", [node.input[0]], [x16], name=f"{node.name}/cast_in",
                                           to=onnx.TensorProto.FLOAT16))
        node.input[:] = [x16, *halves]
        node.output[0] = y16
        nodes.append(node)
        nodes.append(onnx.helper.make_node("Cast", [y16], [y], name=f"{node.name}/cast_out", to=onnx.TensorProto.FLOAT))
    # the converted layer's output keeps its name and FP32 type (the Cast back writes it), so
    # value_info and every consumer stay valid
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    # an FP32 weight no layer reads any more (not shared with a layer left as it was) goes
    used = {name for n in model.graph.node for name in n.input}
    kept_inits = [t for t in model.graph.initializer if t.name in used or t.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept_inits)
    return classes
