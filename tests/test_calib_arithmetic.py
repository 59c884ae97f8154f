"""Accuracy is scored in simulated Q/DQ arithmetic (ORT graph optimisations off), the same on every CPU.

ONNX Runtime's default optimisations fuse Q/DQ into integer kernels (QLinearConv, ConvInteger)
whose results differ between CPUs with and without VNNI; these tests check that the scoring
session keeps every Q/DQ node as written, that fusion does happen otherwise (so the check can
fail), and that the simulated session equals a NumPy model of quantize / dequantize.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from retinanet_trt.calib import scoring
from retinanet_trt.calib.convert import ConvertOptions, convert
from retinanet_trt.runtime.backends.ort_backend import ACCURACY_ARITHMETIC, SIMULATED, cpu_session

INTEGER_OPS = {"QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul"}


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Tiny preset, random weights, static 128x160, INT8 from 4 demo images: (path, report)."""
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx
    from retinanet_trt.model import build_model
    from retinanet_trt.spec.presets import get_preset

    spec = get_preset("tiny")
    spec.preprocess.min_size, spec.preprocess.max_size = 128, 160
    folder = tmp_path_factory.mktemp("arith")
    src = folder / "tiny.onnx"
    export_onnx(build_model(spec, seed=0), spec, src, ExportOptions(input_hw=(128, 160)))
    out = folder / "tiny.int8.onnx"
    report = convert(src, "int8", out, ConvertOptions(calib="demo", calib_images=4, progress=False, evaluate_map=False))
    return out, report


def _op_types(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_scoring_session_keeps_qdq_as_written(tiny_int8: tuple[Path, dict], tmp_path: Path) -> None:
    path, report = tiny_int8
    assert ACCURACY_ARITHMETIC == SIMULATED and report["arithmetic"] == scoring.ARITHMETIC
    assert "graph optimisations off" in report["arithmetic"]
    scored = tmp_path / "scored.onnx"
    scoring.scoring_session(path, optimized_model_path=str(scored))
    ops = _op_types(scored)
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and not ops & INTEGER_OPS, sorted(ops)
    # ORT's default session fuses a Q/DQ file into integer kernels where a conv's output is
    # quantized too, as in ORT's own placement: the check above can fail. (TensorRT's placement
    # leaves most conv outputs float, so ORT computes that file as DQ + float conv either way.)
    from retinanet_trt.calib import int8

    src = path.with_name("tiny.onnx")
    inputs = [np.random.default_rng(i).normal(0, 1, (1, 3, 128, 160)).astype(np.float32) for i in range(2)]
    ort_placed = tmp_path / "ort_placed.onnx"
    int8.quantize(src, ort_placed, int8.calibrate(src, inputs, "minmax", progress=False),
                  int8.QuantizeConfig("minmax", placement="ort"))
    fused = tmp_path / "fused.onnx"
    cpu_session(ort_placed, arithmetic="fused", optimized_model_path=str(fused))
    assert _op_types(fused) & INTEGER_OPS, sorted(_op_types(fused))


def test_unknown_arithmetic_is_refused() -> None:
    from retinanet_trt.errors import UsageError

    with pytest.raises(UsageError, match="arithmetic"):
        cpu_session(b"", arithmetic="vnni")


# ------------------------------------------------------------------------- NumPy reference of Q/DQ

def _quantize(x: np.ndarray, scale: np.ndarray | float) -> np.ndarray:
    """ONNX QuantizeLinear to int8, zero point 0: round half to even, then saturate."""
    return np.clip(np.rint(x / scale), -128, 127).astype(np.int8)


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 conv, stride 1, pad 1, in float64: (1, C, H, W) * (K, C, 3, 3) -> (1, K, H, W)."""
    _, _, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[0, :, i : i + h, j : j + wd] for i in range(3) for j in range(3)], axis=1)  # C, 9, H, W
    out = np.einsum("cthw,kct->khw", cols, w.reshape(w.shape[0], w.shape[1], 9).astype(np.float64))
    return (out + b[:, None, None])[None]


def _qdq_conv_model(x_scale: float, w_q: np.ndarray, w_scale: np.ndarray, bias: np.ndarray, y_scale: float,
                    shape: list[int]) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(DQ(w_q), float bias) -> Q -> DQ -> y: the pattern ORT fuses into QLinearConv."""
    k = w_q.shape[0]
    zp = numpy_helper.from_array(np.array(0, np.int8), "zp")
    inits = [numpy_helper.from_array(w_q, "w_q"), numpy_helper.from_array(w_scale, "w_scale"),
             numpy_helper.from_array(np.zeros(k, np.int8), "w_zp"), numpy_helper.from_array(bias, "b"),
             numpy_helper.from_array(np.array(x_scale, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "y_scale"), zp]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "zp"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "zp"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "y_scale", "zp"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "zp"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "qdq_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], k, *shape[2:]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_simulated_qdq_matches_numpy_rounding_and_saturation() -> None:
    # A power-of-two scale makes x / scale exact, so halves test round-half-to-even exactly.
    scale = 2.0 ** -4
    steps = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, 200.0, -128.5, -300.0, 3.25], np.float32)
    x = (steps * scale).reshape(1, 1, 3, 4).astype(np.float32)
    zp = numpy_helper.from_array(np.array(0, np.int8), "zp")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 3, 4])],
                              [numpy_helper.from_array(np.array(scale, np.float32), "s"), zp])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    got = scoring.scoring_session(model).run(None, {"x": x})[0]
    expect = _quantize(x, scale).astype(np.float32) * scale
    assert np.array_equal(got, expect), (got / scale).ravel()
    assert list((expect / scale).ravel()) == [0, 2, 2, -0, -2, -2, 126, 127, 127, -128, -128, 3]


def test_simulated_int8_conv_matches_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    c, k, h, w = 8, 16, 12, 12
    x = rng.normal(0, 1, (1, c, h, w)).astype(np.float32)
    x[0, 0, 0, :4] = [9.0, -9.0, 40.0, -40.0]  # beyond the input range: saturates
    x_scale = float(np.float32(3.0 / 127))
    w_float = rng.normal(0, 0.2, (k, c, 3, 3)).astype(np.float32)
    w_scale = (np.abs(w_float).reshape(k, -1).max(axis=1) / 127).astype(np.float32)
    w_q = _quantize(w_float, w_scale[:, None, None, None])
    bias = rng.normal(0, 0.1, k).astype(np.float32)
    y_scale = float(np.float32(4.0 / 127))  # below the largest outputs: some saturate
    model = _qdq_conv_model(x_scale, w_q, w_scale, bias, y_scale, [1, c, h, w])

    x_dq = _quantize(x, np.float32(x_scale)).astype(np.float64) * x_scale
    w_dq = w_q.astype(np.float64) * w_scale[:, None, None, None]
    pre = _conv(x_dq, w_dq, bias.astype(np.float64))
    expect = _quantize(pre, y_scale).astype(np.float64) * y_scale
    got = scoring.scoring_session(model).run(None, {"x": x})[0]
    # float32 vs float64 accumulation can only move a value sitting on a rounding boundary by one
    # step; everywhere else the simulated session must equal the reference.
    steps = np.abs(got - expect) / y_scale
    assert steps.max() <= 1.0 + 1e-4
    near_half = np.abs(np.abs(pre / y_scale - np.floor(pre / y_scale)) - 0.5) < 1e-3
    assert np.all((steps < 1e-4) | near_half), int(((steps >= 1e-4) & ~near_half).sum())
    assert np.abs(expect).max() >= 127 * y_scale - 1e-9  # some outputs saturate: that path is tested too
