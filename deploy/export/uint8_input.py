"""trt-export --input-format uint8: normalisation moves into the graph, the host hands over uint8.

The exported graph's float input `images` (N, 3, H, W) becomes an internal tensor fed by a prefix
that takes `images` (N, H, W, 4) uint8 (runtime/uint8_input.py: RGB as decoded + a valid mask)
and computes runtime.preprocess's normalisation with the same float32 operations in the same order:

    x = Cast(images[..., 0:3] in the spec's channel order, float32)
    x = x / float32(1 / scale)       (as _normalized: `x /= np.float32(1.0 / pre.scale)`)
    x = x - mean                     (float32, the spec's channel order)
    x = x / std
    x = x * Cast(images[..., 3:4])   (the padding becomes 0, as the frameworks pad after normalising)
    Transpose -> (N, 3, H, W)

check_uint8_input runs the prefix alone in ONNX Runtime on real photos (and all 256 pixel values)
against runtime.preprocess, and the whole uint8 model against the float one on a photo; the export
report records both, and the file is written only when the network input agrees within 1e-6
(relative to each value's magnitude; ONNX Runtime gives it bit for bit).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import check_writable, write_bytes_atomic
from retinanet_trt.runtime.uint8_input import CHANNELS, UINT8_NHWC, uint8_refusal
from retinanet_trt.spec import ModelSpec

INPUT_TOLERANCE = 1e-6  # max |uint8 graph - host float| / max(1, |host float|) on the network input
PREFIX = "input"  # node and initializer names of the prefix: input/cast, input/normalize/sub, ...


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    out: list[int | str] = []
    for i, d in enumerate(value_info.type.tensor_type.shape.dim):
        out.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or f"dim{i}"))
    return out


def normalize_nodes(pre: Any, src: str, dst: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The prefix: nodes and initializers from uint8 `src` (N, H, W, 4) to float32 `dst` (N, 3, H, W)."""
    order = [0, 1, 2] if pre.channel_order == "RGB" else [2, 1, 0]
    if pre.channel_order not in ("RGB", "BGR"):
        raise UsageError(f"preprocess.channel_order={pre.channel_order!r} (use 'RGB' or 'BGR')")
    p = PREFIX
    inits = [
        numpy_helper.from_array(np.asarray(order, np.int64), f"{p}/channels"),
        numpy_helper.from_array(np.asarray([3], np.int64), f"{p}/mask_channel"),
        numpy_helper.from_array(np.asarray(np.float32(1.0 / pre.scale), np.float32), f"{p}/inv_scale"),
        numpy_helper.from_array(np.asarray(pre.mean, np.float32), f"{p}/mean"),
        numpy_helper.from_array(np.asarray(pre.std, np.float32), f"{p}/std"),
    ]
    nodes = [
        helper.make_node("Gather", [src, f"{p}/channels"], [f"{p}/pixels_u8"], name=f"{p}/channel_order", axis=3),
        helper.make_node("Cast", [f"{p}/pixels_u8"], [f"{p}/pixels"], name=f"{p}/cast", to=TensorProto.FLOAT),
        helper.make_node("Div", [f"{p}/pixels", f"{p}/inv_scale"], [f"{p}/scaled"], name=f"{p}/normalize/scale"),
        helper.make_node("Sub", [f"{p}/scaled", f"{p}/mean"], [f"{p}/centered"], name=f"{p}/normalize/sub_mean"),
        helper.make_node("Div", [f"{p}/centered", f"{p}/std"], [f"{p}/normalized"], name=f"{p}/normalize/div_std"),
        helper.make_node("Gather", [src, f"{p}/mask_channel"], [f"{p}/mask_u8"], name=f"{p}/mask", axis=3),
        helper.make_node("Cast", [f"{p}/mask_u8"], [f"{p}/mask_f"], name=f"{p}/mask_cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{p}/normalized", f"{p}/mask_f"], [f"{p}/padded"], name=f"{p}/zero_padding"),
        helper.make_node("Transpose", [f"{p}/padded"], [dst], name=f"{p}/to_nchw", perm=[0, 3, 1, 2]),
    ]
    return nodes, inits


def add_uint8_input(model: onnx.ModelProto, spec: ModelSpec) -> onnx.ModelProto:
    """A copy of `model` whose input is (N, H, W, 4) uint8 under the same name, normalised in the graph."""
    reason = uint8_refusal(spec.preprocess)
    if reason:
        raise UsageError(reason)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if len(graph.input) != 1:
        raise UsageError(f"the graph has {len(graph.input)} inputs; --input-format uint8 needs the one image input")
    old = graph.input[0]
    if old.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise UsageError(f"input {old.name} is not float32 (already uint8?); export the float model and convert that")
    n, c, h, w = _dims(old)
    if c != 3:
        raise UsageError(f"input {old.name} has {c} channels; --input-format uint8 needs (N, 3, H, W)")
    name, internal = old.name, f"{old.name}_normalized"
    for node in graph.node:
        node.input[:] = [internal if i == name else i for i in node.input]
    nodes, inits = normalize_nodes(spec.preprocess, name, internal)
    new_input = helper.make_tensor_value_info(name, TensorProto.UINT8, [n, h, w, CHANNELS])
    graph.input.remove(old)
    graph.input.insert(0, new_input)
    graph.initializer.extend(inits)
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body)
    return out


def normalize_model(spec: ModelSpec, opset: int = 17) -> onnx.ModelProto:
    """The prefix alone, (N, H, W, 4) uint8 -> (N, 3, H, W) float32: what check_uint8_input runs."""
    nodes, inits = normalize_nodes(spec.preprocess, "images", "normalized")
    graph = helper.make_graph(nodes, "uint8_normalize",
                              [helper.make_tensor_value_info("images", TensorProto.UINT8, ["n", "h", "w", CHANNELS])],
                              [helper.make_tensor_value_info("normalized", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def check_photos() -> list[np.ndarray]:
    """Real photos (scikit-image) of different sizes and aspects, and one image holding every
    uint8 value in every channel (so the whole value range is compared)."""
    from skimage import data

    ramp = np.stack([np.tile(np.arange(256, dtype=np.uint8), (40, 1)),
                     np.tile(np.arange(255, -1, -1, dtype=np.uint8), (40, 1)),
                     np.tile(np.roll(np.arange(256, dtype=np.uint8), 77), (40, 1))], axis=2)
    return [data.astronaut(), data.coffee(), data.chelsea()[:, :300], ramp]


def _input_hw(model: onnx.ModelProto) -> tuple[int, int] | None:
    dims = _dims(model.graph.input[0])
    hw = dims[2:4] if model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT else dims[1:3]
    return (int(hw[0]), int(hw[1])) if all(isinstance(d, int) for d in hw) else None


def check_uint8_input(float_model: onnx.ModelProto, uint8_model: onnx.ModelProto, spec: ModelSpec,
                      photos: list[np.ndarray] | None = None, full_model: bool = True) -> dict[str, Any]:
    """The uint8 path against the float one (ONNX Runtime, CPU), on the network input and, with
    full_model, on every output for the first photo. `passed` when the network input agrees
    within INPUT_TOLERANCE; the output difference is reported (0 when the input is bit-exact)."""
    from retinanet_trt.runtime.backends.ort_backend import cpu_session
    from retinanet_trt.runtime.preprocess import preprocess
    from retinanet_trt.runtime.uint8_input import preprocess_uint8

    photos = check_photos() if photos is None else photos
    input_hw = _input_hw(float_model)
    prefix = cpu_session(normalize_model(spec))
    worst_abs, worst_rel, bit_exact = 0.0, 0.0, True
    for photo in photos:
        ref = preprocess([photo], spec, input_hw).images
        u8 = preprocess_uint8([photo], spec, input_hw).images
        got = prefix.run(["normalized"], {"images": u8})[0]
        diff = np.abs(got - ref)
        worst_abs = max(worst_abs, float(diff.max()))
        worst_rel = max(worst_rel, float((diff / np.maximum(1.0, np.abs(ref))).max()))
        bit_exact = bit_exact and bool(np.array_equal(got, ref))
    report: dict[str, Any] = {
        "format": UINT8_NHWC,
        "input": "images (N, H, W, 4) uint8: RGB as decoded, resized by the framework's uint8 resize; channel 3 is "
                 "1 on the image and 0 on the padding",
        "graph_computes": "channel order, / (1/scale), - mean, / std in float32, x mask, to NCHW",
        "network_input_check": {"images": len(photos), "max_abs": worst_abs, "max_rel_to_magnitude": worst_rel,
                                "bit_exact": bit_exact, "tolerance": INPUT_TOLERANCE,
                                "runtime": "ONNX Runtime CPU (the prefix alone) vs runtime.preprocess"},
        "bytes_per_pixel": {"uint8": CHANNELS, "float": 12},
    }
    report["passed"] = worst_rel <= INPUT_TOLERANCE
    if full_model:
        fs, us = cpu_session(float_model), cpu_session(uint8_model)
        photo = photos[0]
        f_out = fs.run(None, {"images": preprocess([photo], spec, input_hw).images})
        u_out = us.run(None, {"images": preprocess_uint8([photo], spec, input_hw).images})
        names = [o.name for o in fs.get_outputs()]
        report["outputs_check"] = {
            "max_abs": {n: float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
                        for n, a, b in zip(names, f_out, u_out, strict=True)},
            "identical": all(np.array_equal(a, b) for a, b in zip(f_out, u_out, strict=True)),
            "image": "scikit-image astronaut",
        }
    return report


def uint8_input_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], check_full_model: bool = True) -> dict[str, Any]:
    """Read an exported float-input ONNX, give it the uint8 input, check it, write it to dst atomically."""
    from retinanet_trt.spec.metadata import load_onnx, read_info, read_spec, set_metadata

    check_writable(dst)
    float_model = load_onnx(src)
    spec = read_spec(float_model)
    model = add_uint8_input(float_model, spec)
    set_metadata(model, spec, {**read_info(float_model), "input_format": UINT8_NHWC})
    onnx.checker.check_model(model)
    report = check_uint8_input(float_model, model, spec, full_model=check_full_model)
    if not report["passed"]:
        raise UsageError(f"the uint8 input's network input differs from the host pre-process by "
                         f"{report['network_input_check']['max_rel_to_magnitude']:.3g} (> {INPUT_TOLERANCE:g}); "
                         f"{os.fspath(dst)} not written as uint8")
    write_bytes_atomic(dst, model.SerializeToString())
    report["output"] = os.fspath(dst)
    return report
