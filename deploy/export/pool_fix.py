"""Rewrite ceil_mode=1 pooling into ceil_mode=0 with explicit end padding (identical results).

TensorRT and ONNX Runtime have had bugs with ceil_mode (facts/tensorrt.md §5); explicit padding
is understood by every backend.

Why end padding of (stride - 1) works: floor((L + 2p + s - 1 - k) / s) = ceil((L + 2p - k) / s)
for integers, so the floor-mode output length equals the ceil-mode one. PyTorch additionally drops
a last window that would start inside the right padding ((out - 1) * s >= L + p); that can only
happen when k <= p + s - 1. Then the fix needs the input length: static shapes get the exact pad,
dynamic ones are refused with a message.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from retinanet_trt.errors import UsageError

POOL_OPS = ("MaxPool", "AveragePool")


def _attr(node: onnx.NodeProto, name: str, default):  # type: ignore[no-untyped-def]
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:  # type: ignore[no-untyped-def]
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def _torch_ceil_out(length: int, k: int, s: int, p: int) -> int:
    """Output length of a PyTorch ceil_mode pool (including its last-window rule)."""
    out = math.ceil((length + 2 * p - k) / s) + 1
    if (out - 1) * s >= length + p:
        out -= 1
    return out


def _input_spatial_dims(model: onnx.ModelProto, tensor: str) -> list[int | None] | None:
    for vi in list(model.graph.value_info) + list(model.graph.input):
        if vi.name == tensor:
            dims = vi.type.tensor_type.shape.dim
            return [d.dim_value if d.HasField("dim_value") else None for d in dims[2:]]
    return None


def fix_ceil_mode_pools(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Rewrite every MaxPool/AveragePool with ceil_mode=1 in place; return the model and the
    names of the rewritten nodes. AveragePool with count_include_pad=1 and begin padding gets an
    explicit zero Pad in front, so the divisor counts the original padding but not the extra end
    padding (PyTorch's rule)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    fixed: list[str] = []
    new_nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.op_type not in POOL_OPS or not _attr(node, "ceil_mode", 0):
            new_nodes.append(node)
            continue
        kernel = list(_attr(node, "kernel_shape", []))
        nd = len(kernel)
        strides = list(_attr(node, "strides", [1] * nd))
        pads = list(_attr(node, "pads", [0] * (2 * nd)))
        if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise UsageError(f"{node.name}: ceil_mode with auto_pad cannot be rewritten; export with explicit pads")
        dims = _input_spatial_dims(inferred, node.input[0]) or [None] * nd
        end_extra = []
        for axis in range(nd):
            k, s, p_begin, p_end = kernel[axis], strides[axis], pads[axis], pads[axis + nd]
            if p_begin != p_end:
                raise UsageError(f"{node.name}: asymmetric pads with ceil_mode are not supported")
            if k > p_begin + s - 1:
                end_extra.append(s - 1)  # exact for every input length
                continue
            length = dims[axis]
            if length is None:
                raise UsageError(
                    f"{node.name}: ceil_mode pool (k={k}, s={s}, p={p_begin}) needs a static input size to "
                    "be rewritten exactly; export without --dynamic"
                )
            target = _torch_ceil_out(length, k, s, p_begin)
            end_extra.append(max(0, (target - 1) * s + k - (length + 2 * p_begin)))
        count_include_pad = node.op_type == "AveragePool" and _attr(node, "count_include_pad", 0)
        if count_include_pad and any(pads):
            # Make the original padding real zeros, so it is still counted once the pool itself
            # stops counting padding (the extra end padding must never be counted).
            pad_name = f"{node.name}/explicit_pad"
            pads_init = numpy_helper.from_array(
                np.array([0, 0] + pads[:nd] + [0, 0] + pads[nd:], dtype=np.int64), f"{pad_name}/pads"
            )
            model.graph.initializer.append(pads_init)
            padded = f"{node.input[0]}__padded"
            new_nodes.append(helper.make_node("Pad", [node.input[0], pads_init.name], [padded], name=pad_name, mode="constant"))
            node.input[0] = padded
            _set_attr(node, "pads", [0] * nd + end_extra)
        else:
            _set_attr(node, "pads", pads[:nd] + [pads[nd + i] + end_extra[i] for i in range(nd)])
        if node.op_type == "AveragePool":
            _set_attr(node, "count_include_pad", 0)
        _set_attr(node, "ceil_mode", 0)
        new_nodes.append(node)
        fixed.append(node.name)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return model, fixed
