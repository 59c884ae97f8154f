"""calib.fp16.layers_to_fp16 (the budget's --keep-as fp16): a named layer computes in FP16 with its
own FP16 weights between two Casts, its neighbours and any layer sharing its weight unchanged;
a layer FP16 cannot hold stays FP32. Checked against torch's conv on FP16-rounded operands."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from retinanet_trt.calib.fp16 import FP16_SAFE_MAX, layers_to_fp16


def _model(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x (1,3,9,11) -> a: Conv(w, b) -> Relu -> b: Conv(w2) -> y;  x -> c: Conv(w, b) -> z (shares a's weight)."""
    weights = {"w": rng.normal(size=(3, 3, 3, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32),
               "w2": rng.normal(size=(2, 3, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["t"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["t"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="b"),
             helper.make_node("Conv", ["x", "w", "b"], ["z"], name="c", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 11])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 9, 11]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 9, 11])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weights


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})


def _half(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("seed", range(3))
def test_named_layer_computes_in_fp16_the_rest_as_before(seed: int) -> None:
    rng = np.random.default_rng(seed)
    model, w = _model(rng)
    x = (rng.normal(size=(1, 3, 9, 11)) * 4).astype(np.float32)
    y32, z32 = _run(model, x)
    classes = layers_to_fp16(model, ["a"], peaks={})
    onnx.checker.check_model(model, full_check=True)
    assert classes == {"a": "fp16"}
    y16, z16 = _run(model, x)
    # a in FP16: FP16-rounded input, weight and bias; output rounded to FP16 (2 ulps of slack for
    # the accumulation order); b then computes in FP32 on relu(a)
    t = torch.nn.functional.conv2d(_half(x), _half(w["w"]), _half(w["b"]), padding=1)
    t16 = t.numpy().astype(np.float16).astype(np.float32)
    ulp = np.spacing(np.abs(t16).astype(np.float16)).astype(np.float32)
    ref_y = torch.nn.functional.conv2d(torch.relu(torch.from_numpy(t16)), torch.from_numpy(w["w2"])).numpy()
    got_t = np.asarray(y16)
    assert got_t.shape == ref_y.shape
    bound = np.abs(w["w2"]).sum(axis=(1, 2, 3)).max() * 2 * ulp.max()  # 2 ulps through b's weights
    assert np.abs(got_t - ref_y).max() <= bound
    assert np.abs(y16 - y32).max() > 0  # the rounding is real: FP16 is not FP32
    # c shares a's weight initializer and is untouched: FP32, same output bit for bit
    assert np.array_equal(z16, z32)
    inits = {t.name: t for t in model.graph.initializer}
    c = next(n for n in model.graph.node if n.name == "c")
    assert inits[c.input[1]].data_type == TensorProto.FLOAT
    a = next(n for n in model.graph.node if n.name == "a")
    assert inits[a.input[1]].data_type == TensorProto.FLOAT16 and inits[a.input[2]].data_type == TensorProto.FLOAT16
    # w and b stay: c still reads them


def test_a_weight_no_layer_reads_any_more_is_dropped() -> None:
    model, _ = _model(np.random.default_rng(0))
    assert layers_to_fp16(model, ["a", "b", "c"], peaks={}) == {"a": "fp16", "b": "fp16", "c": "fp16"}
    onnx.checker.check_model(model, full_check=True)
    names = {t.name for t in model.graph.initializer}
    assert not names & {"w", "b", "w2"} and len(names) == 5  # a's and c's own FP16 w and b, b's w2
    assert all(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)


def test_a_layer_fp16_cannot_hold_stays_fp32() -> None:
    rng = np.random.default_rng(0)
    model, _ = _model(rng)
    before = model.SerializeToString()
    classes = layers_to_fp16(model, ["b"], peaks={"y": FP16_SAFE_MAX * 2})
    assert classes == {"b": "fp32"} and model.SerializeToString() == before
    # a weight beyond FP16's range stays FP32 too
    big, _ = _model(rng)
    w2 = next(t for t in big.graph.initializer if t.name == "w2")
    w2.CopyFrom(numpy_helper.from_array(np.full((2, 3, 1, 1), 1e6, np.float32), "w2"))
    assert layers_to_fp16(big, ["b"], peaks={}) == {"b": "fp32"}
