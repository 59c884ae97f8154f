"""Q/DQ placement by TensorRT's rules (calib/placement.py), its lint rules, the ModelOpt reference
fixture, and calibration ranges that depend on neither batching nor order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from retinanet_trt.calib import fp16, int8, lint, placement, select
from retinanet_trt.calib.placement import ACTIVATION, WEIGHT, Site

FIXTURE = Path(__file__).parent / "data" / "tiny_modelopt_int8.onnx"
C = 16  # channels: enough for TensorRT's INT8 conv kernels (placement.int8_conv_supported)


# ------------------------------------------------------------------------------ small graphs

def _conv(name: str, x: str, w: str, out: str) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, w, f"{w}_b"], [out], name=name, pads=[1, 1, 1, 1], kernel_shape=[3, 3])


def _weights(names: list[str], seed: int = 0) -> list[onnx.TensorProto]:
    rng = np.random.default_rng(seed)
    inits = []
    for w in names:
        inits.append(numpy_helper.from_array((rng.standard_normal((C, C, 3, 3)) * 0.1).astype(np.float32), w))
        inits.append(numpy_helper.from_array(np.zeros(C, np.float32), f"{w}_b"))
    return inits


def residual_block(projection: bool = False, pool: bool = False, tail: str = "conv") -> onnx.ModelProto:
    """x -> c0 -> r0 [-> pool] = t -> c1 -> r1 -> c2 -> add(c2, t or ds(t)) -> r2 -> c3 (or Sigmoid) -> y.

    projection: the skip branch is a conv `ds` too (a ResNet stage's first block); pool: a MaxPool
    between r0 and the block; tail 'sigmoid': the graph ends in a Sigmoid instead of conv c3."""
    t = "pool_out" if pool else "r0_out"
    nodes = [_conv("c0", "x", "w0", "c0_out"), helper.make_node("Relu", ["c0_out"], ["r0_out"], name="r0")]
    if pool:
        nodes.append(helper.make_node("MaxPool", ["r0_out"], ["pool_out"], name="pool", kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1]))
    nodes += [_conv("c1", t, "w1", "c1_out"), helper.make_node("Relu", ["c1_out"], ["r1_out"], name="r1"),
              _conv("c2", "r1_out", "w2", "c2_out")]
    skip = t
    weights = ["w0", "w1", "w2"]
    if projection:
        nodes.append(_conv("ds", t, "wd", "ds_out"))
        skip, weights = "ds_out", weights + ["wd"]
    nodes += [helper.make_node("Add", ["c2_out", skip], ["add_out"], name="add"),
              helper.make_node("Relu", ["add_out"], ["r2_out"], name="r2")]
    if tail == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", ["r2_out"], ["y"], name="sig"))
    else:
        nodes.append(_conv("c3", "r2_out", "w3", "y"))
        weights.append("w3")
    shape = [1, C, 8, 8]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], _weights(weights))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ranges(model: onnx.ModelProto, absmax: float = 2.0) -> dict:
    """ORT's TensorsData dict (as the calibration cache holds it) giving every tensor [-absmax, absmax]."""
    import tempfile

    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

    names = {"x"} | {o for n in model.graph.node for o in n.output}
    data = TensorsData(CalibrationMethod.MinMax, {n: (np.array([-absmax], np.float32), np.array([absmax], np.float32))
                                                  for n in names})
    with tempfile.TemporaryDirectory() as tmp:
        save_tensors_data(data, Path(tmp) / "r.json")
        return json.loads((Path(tmp) / "r.json").read_text())


def _all(model: onnx.ModelProto) -> set[str]:
    return {n.name for n in model.graph.node}


def _quantized(model: onnx.ModelProto, sites: list[Site]) -> onnx.ModelProto:
    return placement.insert_qdq(model, sites, _ranges(model))


def _keys(sites: list[Site]) -> set[tuple[str, int, str]]:
    return {s.key for s in sites}


# ------------------------------------------------------------------------------------ the plan

def test_plan_quantizes_conv_inputs_and_the_skip_input_only() -> None:
    model = residual_block()
    sites = placement.plan_tensorrt(model, _all(model))
    assert _keys(sites) == {
        *((c, 0, ACTIVATION) for c in ("c0", "c1", "c2", "c3")), *((c, 1, WEIGHT) for c in ("c0", "c1", "c2", "c3")),
        ("add", 1, ACTIVATION),  # the skip input; input 0 comes from c2, which TensorRT fuses with the Add
    }
    assert not any(s.node in ("r0", "r1", "r2") for s in sites)  # no Q/DQ on ReLUs that fuse with their conv
    written = _quantized(model, sites)
    assert _keys(placement.read_sites(written)) == _keys(sites)
    result = lint.lint_qdq(written)
    assert result.passed, result.problems
    # one Q/DQ pair per tensor: the block input feeds c1 and the Add's skip input through the same DQ
    users = [n.name for n in written.graph.node if "r0_out_DequantizeLinear_Output" in n.input]
    assert sorted(users) == ["add", "c1"]


def test_projection_shortcut_fuses_the_deeper_branch() -> None:
    model = residual_block(projection=True)
    g = placement._Graph(model)
    add = next(n for n in model.graph.node if n.name == "add")
    assert placement.fused_add_input(g, add, {"c2", "ds"}) == 0  # c2 is two convs from the block input, ds one
    sites = placement.plan_tensorrt(model, _all(model))
    assert ("add", 1, ACTIVATION) in _keys(sites) and ("add", 0, ACTIVATION) not in _keys(sites)
    assert lint.lint_qdq(_quantized(model, sites)).passed


def test_a_pool_whose_output_is_quantized_reads_a_quantized_input() -> None:
    model = residual_block(pool=True)
    sites = placement.plan_tensorrt(model, _all(model))
    assert ("pool", 0, ACTIVATION) in _keys(sites) and ("r0", 0, ACTIVATION) not in _keys(sites)
    assert lint.lint_qdq(_quantized(model, sites)).passed
    # with c1 and the Add float, nothing after the pool is INT8: the pool stays float too
    sites = placement.plan_tensorrt(model, _all(model) - {"c1", "add"})
    assert ("pool", 0, ACTIVATION) not in _keys(sites)


def test_excluded_convs_read_float_and_shared_weights_stay_float_for_them() -> None:
    model = residual_block()
    model.graph.node[-1].input[1] = "w2"  # c3 shares c2's weight, as the head's convs share theirs over levels
    sites = placement.plan_tensorrt(model, _all(model) - {"c3"})
    written = _quantized(model, sites)
    convs = {n.name: n for n in written.graph.node if n.op_type == "Conv"}
    assert convs["c3"].input[0] == "r2_out" and convs["c3"].input[1] == "w2"
    assert convs["c2"].input[1] == "w2_DequantizeLinear_Output"
    assert {"w2", "w2_quantized"} <= {t.name for t in written.graph.initializer}
    assert "w3" not in {t.name for t in written.graph.initializer}  # unused after the rewire: dropped
    assert lint.lint_qdq(written).passed


def test_small_channel_convs_stay_float() -> None:
    conv = helper.make_node("Conv", ["a", "w"], ["b"], kernel_shape=[3, 3])
    assert placement.int8_conv_supported(conv, [16, 16, 3, 3], False)
    assert placement.int8_conv_supported(conv, [8, 3, 3, 3], True)  # the first conv of the network
    assert placement.int8_conv_supported(conv, [16, 8, 3, 3], False)
    assert not placement.int8_conv_supported(conv, [8, 8, 3, 3], False)
    assert not placement.int8_conv_supported(conv, [12, 12, 3, 3], False)


def test_scales_and_int8_weights_match_onnx_runtimes_quantizer(tmp_path: Path) -> None:
    model = residual_block()
    src = tmp_path / "block.onnx"
    onnx.save(model, str(src))
    ranges = _ranges(model, absmax=3.0)
    ours = int8.quantize(src, tmp_path / "trt.onnx", ranges, int8.QuantizeConfig("minmax"))
    ort = int8.quantize(src, tmp_path / "ort.onnx", ranges, int8.QuantizeConfig("minmax", placement="ort"))
    a = {t.name: numpy_helper.to_array(t) for t in ours.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in ort.graph.initializer}
    shared = [k for k in a if k.endswith(("_quantized", "_scale")) and k in b]
    assert {"w1_quantized", "w1_scale", "r0_out_scale"} <= set(shared)
    for name in shared:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    assert float(a["r0_out_scale"]) == pytest.approx(3.0 / 127)


# ------------------------------------------------------------------------------------ the lint

def _without(sites: list[Site], *keys: tuple[str, int, str]) -> list[Site]:
    return [s for s in sites if s.key not in keys]


@pytest.mark.parametrize(("edit", "needle"), [
    ("drop c1 weight", "Conv 'c1': activation input is quantized but the weight is float"),
    ("drop c1 input", "Conv 'c1': weight is quantized but activation input"),
    ("q/dq conv->relu", "Relu 'r0': Q/DQ on its input 'c0_out', the output of Conv 'c0'"),
    ("q/dq add->relu", "Relu 'r2': Q/DQ on its input 'add_out', the output of Add 'add'"),
    ("quantize fused add input", "Add 'add': input 'c2_out' from Conv 'c2', which TensorRT fuses with the Add, is quantized"),
    ("float skip input", "Add 'add': skip input 'r0_out' is float"),
])
def test_lint_names_the_node_that_breaks_a_placement_rule(edit: str, needle: str) -> None:
    model = residual_block()
    sites = placement.plan_tensorrt(model, _all(model))
    edits = {
        "drop c1 weight": lambda s: _without(s, ("c1", 1, WEIGHT)),
        "drop c1 input": lambda s: _without(s, ("c1", 0, ACTIVATION), ("add", 1, ACTIVATION)),
        "q/dq conv->relu": lambda s: [*s, Site("r0", 0, ACTIVATION, "c0_out")],
        "q/dq add->relu": lambda s: [*s, Site("r2", 0, ACTIVATION, "add_out")],
        "quantize fused add input": lambda s: [*s, Site("add", 0, ACTIVATION, "c2_out")],
        "float skip input": lambda s: _without(s, ("add", 1, ACTIVATION)),
    }
    result = lint.lint_qdq(_quantized(model, edits[edit](sites)))
    assert not result.passed
    assert any(needle in p for p in result.problems), result.problems


def test_lint_flags_a_pair_that_no_int8_op_reads() -> None:
    model = residual_block(tail="sigmoid")
    sites = placement.plan_tensorrt(model, _all(model))
    assert lint.lint_qdq(_quantized(model, sites)).passed
    result = lint.lint_qdq(_quantized(model, [*sites, Site("sig", 0, ACTIVATION, "r2_out")]))
    assert any("'r2_out_DequantizeLinear': feeds only Sigmoid" in p for p in result.problems), result.problems


def test_lint_rejects_onnx_runtimes_own_placement(tmp_path: Path) -> None:
    model = residual_block()
    src = tmp_path / "block.onnx"
    onnx.save(model, str(src))
    ort = int8.quantize(src, tmp_path / "ort.onnx", _ranges(model), int8.QuantizeConfig("minmax", placement="ort"))
    problems = lint.lint_qdq(ort).problems
    assert any(p.startswith("Relu 'r0'") for p in problems), problems  # Q/DQ between c0 and its ReLU
    assert any(p.startswith("Add 'add': input 'c2_out'") for p in problems), problems  # both Add inputs quantized


def test_lint_accepts_float_weights_quantized_in_the_graph() -> None:
    """ModelOpt's form: a float weight -> QuantizeLinear -> DequantizeLinear (axis 0) -> Conv."""
    model = residual_block()
    written = _quantized(model, placement.plan_tensorrt(model, _all(model)))
    inits = {t.name: t for t in written.graph.initializer}
    dq = next(n for n in written.graph.node if n.name == "w1_DequantizeLinear")
    inits["w1_quantized"].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(
        next(t for t in model.graph.initializer if t.name == "w1")), "w1_float"))
    q = helper.make_node("QuantizeLinear", ["w1_float", "w1_scale", "w1_zero_point"], ["w1_q"], name="w1_QuantizeLinear", axis=0)
    dq.input[0] = "w1_q"
    written.graph.node.insert(0, q)
    assert _keys(placement.read_sites(written)) == _keys(placement.read_sites(_quantized(model, placement.plan_tensorrt(model, _all(model)))))
    result = lint.lint_qdq(written)
    assert result.passed, result.problems


# --------------------------------------------------------------------------- ModelOpt reference

def test_modelopt_fixture_differs_exactly_by_the_explained_sites() -> None:
    """tests/data/tiny_modelopt_int8.onnx: `python benchmarks/modelopt_compare.py --fixture`."""
    assert FIXTURE.stat().st_size < 2_000_000
    theirs = onnx.load(str(FIXTURE))
    assert lint.lint_qdq(theirs).passed
    view = placement.float_view(theirs)  # the FP32 graph it was made from, same node names
    predictors = set(select.select_nodes(view, [select.PREDICTORS]))
    assert len(predictors) == 10
    ours = placement.plan_tensorrt(view, _all(view) - predictors)
    rows = placement.explained_differences(ours, placement.read_sites(theirs), view)
    assert all(r["only_in"] == "theirs" for r in rows)
    got = {(r["node"], r["input"], r["kind"], r["explanation"]) for r in rows}
    expected = {(p, i, kind, "predictor") for p in predictors for i, kind in ((0, ACTIVATION), (1, WEIGHT))}
    expected.add(("backbone/stem/pool/MaxPool", 0, ACTIVATION, "pool-before-float"))  # its layer1 convs have 8 channels
    assert got == expected
    assert set(placement.EXPLANATIONS) == {"predictor", "pool-before-float"}
    # with the predictors quantized too, only the pool differs
    everything = placement.plan_tensorrt(view, _all(view))
    assert {r["node"] for r in placement.differences(everything, placement.read_sites(theirs))} == {"backbone/stem/pool/MaxPool"}


# ------------------------------------------------------------------- ranges: order and batching

@pytest.fixture(scope="module")
def block_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    model = residual_block(projection=True, pool=True)
    path = tmp_path_factory.mktemp("hist") / "block.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(1)
    inputs = [(rng.standard_normal((1, C, 8, 8)) * (1 + i)).astype(np.float32) for i in range(6)]
    return path, inputs


@pytest.mark.parametrize("method", ["entropy", "percentile", "minmax"])
def test_ranges_do_not_depend_on_batching_or_order(block_file: tuple[Path, list[np.ndarray]], method: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path, inputs = block_file
    monkeypatch.setattr(int8, "CHUNK", 1)
    first = int8.calibrate(path, inputs, method, progress=False)
    monkeypatch.setattr(int8, "CHUNK", 4)
    shuffled = [inputs[i] for i in (3, 0, 5, 1, 4, 2)]
    second = int8.calibrate(path, shuffled, method, progress=False)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    data = first["data"]
    assert "c2_out" in data and "pool_out" in data
    peak = max(float(np.max(np.abs(x))) for x in inputs)
    if method != "minmax":  # a histogram method clips: no wider than the max range
        assert float(data["x"]["highest"]["data"][0]) <= peak + 1e-6
        # ... and keeps the observed peak for FP16's overflow check
        assert first["observed_absmax"]["x"] == pytest.approx(peak, rel=1e-6)
    assert fp16.tensor_peaks(first)["x"] == pytest.approx(peak, rel=1e-6)


def _pytorch_quantization_amax(calib_hist: np.ndarray, calib_bin_edges: np.ndarray, stride: int = 1,
                               start_bin: int = 128) -> float:
    """pytorch-quantization's calib.histogram._compute_amax_entropy (num_bits 8, signed), loop by loop."""
    from collections import Counter

    def normalize(d: np.ndarray) -> None:
        d /= d.sum()

    def kl(p: np.ndarray, q: np.ndarray) -> float:  # scipy.stats.entropy
        p, q = p / p.sum(), q / q.sum()
        if np.any((p > 0) & (q == 0)):
            return np.inf
        m = p > 0
        return float(np.sum(p[m] * np.log(p[m] / q[m])))

    bins = calib_hist.astype(np.float64).copy()
    bins[0] = bins[1]
    nbins = 128
    divergences, new_density_counts = [], np.zeros(nbins, dtype=np.float64)
    for i in range(start_bin, len(bins) + 1, stride):
        new_density_counts.fill(0)
        space = np.linspace(0, i, num=nbins + 1)
        digitized_space = np.digitize(range(i), space) - 1
        digitized_space[bins[:i] == 0] = -1
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density_counts[digitized] += bins[idx]
        for key, val in Counter(digitized_space).items():
            if key != -1:
                new_density_counts[key] = new_density_counts[key] / val
        new_density = np.zeros(i, dtype=np.float64)
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density[idx] = new_density_counts[digitized]
        normalize(new_density)
        reference_density = np.array(bins[: len(digitized_space)])
        reference_density[-1] += np.sum(bins[i:])
        normalize(reference_density)
        divergences.append(kl(reference_density, new_density))
    d = np.array(divergences)
    last_argmin = len(d) - 1 - np.argmin(d[::-1])
    return float(calib_bin_edges[last_argmin * stride + start_bin])


def test_histogram_thresholds_equal_the_reference_algorithms() -> None:
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(0)
    clipped = 0
    for bins, values in ((512, rng.standard_normal(20000)), (384, np.abs(rng.standard_cauchy(5000)).clip(0, 50)),
                         (256, np.maximum(rng.standard_normal(8000), 0) ** 2)):
        values = values.astype(np.float32)
        a = np.float32(np.abs(values).max())
        lo, hi = np.float32(values.min()), np.float32(values.max())
        abs_hist, abs_edges = np.histogram(np.abs(values), bins, range=(np.float32(0), a))
        amax = _pytorch_quantization_amax(abs_hist, abs_edges)
        clipped += amax < float(a)
        assert int8.entropy_threshold(abs_hist, abs_edges, 128, lo, hi) == (max(-amax, float(lo)), min(amax, float(hi)))
        collector = HistogramCollector("percentile", True, bins, 128, 99.9, "same")
        collector.histogram_dict = {"t": (abs_hist, abs_edges, lo, hi)}
        ref_lo, ref_hi = collector.compute_percentile()["t"][:2]
        assert int8.percentile_threshold(abs_hist, abs_edges, 99.9, lo, hi) == (float(ref_lo), float(ref_hi))
    assert clipped >= 2  # the search does clip long tails
