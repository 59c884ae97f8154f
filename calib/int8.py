"""INT8 as explicit quantization: Q/DQ nodes placed by TensorRT's rules, ranges from ONNX Runtime's calibrators.

Placement (calib/placement.py) follows TensorRT's Q/DQ layer-placement recommendations: the
activation input and the weight of every quantized Conv, the skip input of a residual Add, the
input of a MaxPool / nearest Resize whose output is quantized, and nothing else (no Q/DQ between a
Conv and the ReLU or Add it fuses with, none on the graph outputs). ONNX Runtime's quantize_static
places Q/DQ its own way (around every ReLU and Add, on conv outputs); it stays available as
placement "ort" for comparison. Scales use ONNX Runtime's arithmetic either way: symmetric int8
(zero point 0), activations per tensor (max|range| / 127), weights per output channel (axis 0),
biases float (TensorRT rejects an int32 DequantizeLinear on a bias).

Why ONNX Runtime's calibrators and not NVIDIA Model Optimizer: `nvidia-modelopt[onnx]` installs
onnxruntime-gpu beside onnxruntime (both own the `onnxruntime` module) and pins an older onnx, so
one install would not leave one working onnxruntime (docs/precision.md). ModelOpt is the reference
placement is checked against (benchmarks/modelopt_compare.py), in its own environment.

Two steps, so calibration can be cached and reused for any set of quantized nodes:
`calibrate` runs the FP32 model over the calibration inputs and returns activation ranges for
every tensor; `quantize` writes a Q/DQ model from those ranges and a node exclusion list.
Ranges do not depend on how the inputs are batched or ordered: max ranges are a max over all
inputs, and the histogram methods (entropy, percentile) build one histogram per tensor over all
inputs, with edges fixed by a first min/max pass, before choosing a threshold.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx.external_data_helper import uses_external_data
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    create_calibrator,
    quantize_static,
)
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from tqdm import tqdm

from retinanet_trt.calib import placement
from retinanet_trt.errors import UsageError

METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# Histogram settings are part of the method (and of the cache key). Entropy: TensorRT's KL search
# (pytorch-quantization's algorithm) on 2048 bins of |x| with 128 levels; percentile: ORT's defaults.
METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "minmax": {},
    "entropy": {"num_bins": 2048, "num_quantized_bins": 128, "start_bin": 128, "algorithm": "tensorrt-kl-abs"},
    "percentile": {"num_bins": 2048, "percentile": 99.999},
}
# NVIDIA's tools call min/max calibration "max" (ModelOpt, TAO); accept their name too.
METHOD_ALIASES = {"max": "minmax"}
PLACEMENTS = ("tensorrt", "ort")
CHUNK = 2  # images per collect step: ORT keeps every tensor of a step in memory (R50: ~0.4 GB/image)


@dataclass
class QuantizeConfig:
    """How the Q/DQ model is made. exclude: node names kept in FP32."""

    method: str = "minmax"
    exclude: list[str] = field(default_factory=list)
    nodes_to_quantize: list[str] | None = None  # None: every supported node not excluded
    placement: str = "tensorrt"  # or "ort": ONNX Runtime quantize_static's own placement (comparison only)


def canonical_method(method: str) -> str:
    """'max' -> 'minmax'; other names unchanged (checked by method_params)."""
    return METHOD_ALIASES.get(method, method)


def method_params(method: str) -> dict[str, Any]:
    if method not in METHODS:
        raise UsageError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    return dict(METHOD_PARAMS[method])


def _op_types() -> list[str]:
    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


class _Reader(CalibrationDataReader):
    def __init__(self, input_name: str, inputs: list[np.ndarray]) -> None:
        self._items = iter([{input_name: x} for x in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def _same_shape_chunks(inputs: list[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """Consecutive runs of at most `size` inputs of one shape: ORT's histogram calibrators stack
    each tensor over a collect step, which fails for a dynamic model fed images of several sizes."""
    chunk: list[np.ndarray] = []
    for x in inputs:
        if chunk and (len(chunk) == size or x.shape != chunk[0].shape):
            yield chunk
            chunk = []
        chunk.append(x)
    if chunk:
        yield chunk


@contextmanager
def _quiet_ort_logging() -> Iterator[None]:
    # quantize_static logs a "consider pre-processing" warning on every call; that ORT pre-pass
    # (fusion and renaming) would drop the level tags in node names, so it is skipped on purpose.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def require_calibration_cache_api() -> None:
    """ONNX Runtime's calibration cache (quantize_static(calibration_cache_path=...) and
    save_tensors_data) came with onnxruntime PR #28221 (2026); older releases cannot reuse ranges."""
    import inspect

    from onnxruntime.quantization import calibrate as ort_calibrate

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters or not hasattr(
        ort_calibrate, "save_tensors_data"
    ):
        import onnxruntime

        raise UsageError(
            f"onnxruntime {onnxruntime.__version__} has no calibration cache API; "
            "install a newer onnxruntime (tested: 1.32) with `pip install -U onnxruntime`"
        )


def calibrate(model_path: Path, inputs: list[np.ndarray], method: str, progress: bool = True) -> dict[str, Any]:
    """Activation ranges of every quantizable tensor over `inputs`, as ORT's TensorsData dict (JSON-able).

    The same inputs in any order or batching give the same ranges: max ranges are ORT's MinMax
    calibrator (a min and a max over all inputs); entropy and percentile take one histogram per
    tensor over all inputs (histogram_ranges), where ORT's HistogramCalibrater would re-bin per
    collect step and so depend on both.

    ORT's create_calibrator writes `<stem>-inferred.onnx` beside the model it is given, then deletes
    it: that would clobber a user's file of that name, fail in a read-only folder and race with a
    second run on the same model. So it is given a private copy in a temporary folder.
    """
    params = method_params(method)
    require_calibration_cache_api()
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    with tempfile.TemporaryDirectory(prefix="retinanet_trt.calib.") as tmp:
        model = _private_copy(Path(model_path), Path(tmp))
        input_name = onnx.load(str(model), load_external_data=False).graph.input[0].name
        histogram = method != "minmax"
        calibrator = create_calibrator(
            model, _op_types(), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.MinMax, extra_options={"symmetric": not histogram},
        )
        label = f"calibrating ({method}{', pass 1 of 2: min/max' if histogram else ''})"
        bar = tqdm(total=len(inputs), desc=label, unit="run", disable=not progress, leave=False)
        for chunk in _same_shape_chunks(inputs, CHUNK):
            calibrator.collect_data(_Reader(input_name, chunk))
            bar.update(len(chunk))
        bar.close()
        ranges = calibrator.compute_data()
        del calibrator
        if histogram:
            bounds = {name: (float(np.asarray(td.range_value[0]).min()), float(np.asarray(td.range_value[1]).max()))
                      for name, td in ranges.items()}
            thresholds = histogram_ranges(model, Path(tmp) / "histogram.onnx", inputs, bounds, method, params, progress)
            ranges = TensorsData(METHODS[method], {
                k: TensorData(lowest=np.array([lo], np.float32), highest=np.array([hi], np.float32))
                for k, (lo, hi) in thresholds.items()})
        path = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, path)
        out: dict[str, Any] = json.loads(path.read_text())
        if histogram:  # the chosen ranges clip; FP16's overflow check needs the observed peaks
            out["observed_absmax"] = {k: max(abs(lo), abs(hi)) for k, (lo, hi) in bounds.items()}
        return out


def histogram_ranges(model: Path, augmented: Path, inputs: list[np.ndarray], bounds: dict[str, tuple[float, float]],
                     method: str, params: dict[str, Any], progress: bool = True) -> dict[str, tuple[float, float]]:
    """Entropy or percentile (lowest, highest) per tensor from one histogram over all `inputs`.

    bounds: each tensor's (min, max) over all inputs (the first pass). The histogram is of |x|,
    num_bins over [0, a] with a = max |bound|, so its edges are fixed before any count, and counts
    are summed over the inputs one at a time: neither order nor batching changes a count. The
    threshold is then chosen on it: entropy_threshold (TensorRT's KL search) or
    percentile_threshold (ONNX Runtime's symmetric percentile)."""
    calibrator = create_calibrator(model, _op_types(), augmented_model_path=str(augmented),
                                   calibrate_method=METHODS[method], extra_options={"symmetric": True, **params})
    session = calibrator.infer_session
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    wanted = [n for n in names if n in calibrator.tensors_to_calibrate and n in bounds]
    bins = int(params["num_bins"])
    absmax = {n: np.float32(max(abs(bounds[n][0]), abs(bounds[n][1]))) for n in wanted}
    counts = {n: np.zeros(bins, np.int64) for n in wanted}
    bar = tqdm(total=len(inputs), desc=f"calibrating ({method}, pass 2 of 2: histograms)", unit="run",
               disable=not progress, leave=False)
    for x in inputs:
        values = dict(zip(names, session.run(None, {input_name: x}), strict=True))
        for n in wanted:
            a = absmax[n]
            data = values[n].ravel()
            counts[n] += np.histogram(np.abs(data), bins, range=(np.float32(0), a))[0]
        bar.update(1)
    bar.close()
    result: dict[str, tuple[float, float]] = {}
    for n in wanted:
        a = absmax[n]
        lo, hi = np.float32(bounds[n][0]), np.float32(bounds[n][1])
        if method == "percentile":
            edges = np.histogram_bin_edges(np.zeros(0, np.float32), bins, range=(np.float32(0), a))
            result[n] = percentile_threshold(counts[n], edges, float(params["percentile"]), lo, hi)
        else:
            edges = np.histogram_bin_edges(np.zeros(0, np.float32), bins, range=(np.float32(0), a))
            result[n] = entropy_threshold(counts[n], edges, int(params["num_quantized_bins"]), lo, hi,
                                          int(params["start_bin"]))
    return result


def percentile_threshold(hist: np.ndarray, edges: np.ndarray, percentile: float, lo: float, hi: float
                         ) -> tuple[float, float]:
    """ORT's symmetric percentile choice on a histogram of |x|: the edge where the CDF reaches
    `percentile`, clipped to the observed [lo, hi] (HistogramCollector.compute_percentile)."""
    total = hist.sum()
    if total == 0:
        return float(lo), float(hi)
    idx = int(np.searchsorted(np.cumsum(hist / total), percentile / 100.0))
    t = float(edges[min(idx, len(edges) - 1)])
    return max(-t, float(lo)), min(t, float(hi))


def entropy_threshold(hist: np.ndarray, edges: np.ndarray, num_quantized_bins: int, lo: float, hi: float,
                      start_bin: int = 128) -> tuple[float, float]:
    """TensorRT's entropy calibration on a histogram of |x|: the edge that minimises the KL divergence
    between the clipped distribution and its `num_quantized_bins`-level quantization, clipped to the
    observed [lo, hi].

    The algorithm of NVIDIA's pytorch-quantization (`calib.histogram._compute_amax_entropy`, signed
    int8: 128 levels, candidates from bin 128 to the last, stride 1, the zero bin set to its
    neighbour's count, the last minimum wins), with its per-bin loops written in NumPy (a test
    compares it with a loop-by-loop transcription). ONNX Runtime's entropy works on a signed
    histogram instead and spends half its levels on the empty negative side of a ReLU output; over
    one histogram of all images it clipped the demo's tensors to a sixteenth of their range."""
    h = hist.astype(np.float64).copy()
    if h.size > 1:
        h[0] = h[1]
    total = h.sum()
    if total <= 0 or h.size < start_bin:
        return float(lo), float(hi)
    prefix = np.concatenate([[0.0], np.cumsum(h)])
    divergences = []
    for i in range(start_bin, h.size + 1):
        b = h[:i]
        group = np.digitize(np.arange(i), np.linspace(0, i, num=num_quantized_bins + 1)) - 1
        nonzero = b != 0
        sums = np.bincount(group[nonzero], weights=b[nonzero], minlength=num_quantized_bins)
        counts = np.bincount(group[nonzero], minlength=num_quantized_bins)
        q = np.zeros(i)
        q[nonzero] = (sums / np.maximum(counts, 1))[group[nonzero]]
        p = b.copy()
        p[-1] += total - prefix[i]
        p /= p.sum()
        q_total = q.sum()
        mask = p > 0
        if q_total <= 0 or np.any(q[mask] == 0):
            divergences.append(np.inf)
            continue
        q /= q_total
        divergences.append(float(np.sum(p[mask] * np.log(p[mask] / q[mask]))))
    d = np.asarray(divergences)
    last_argmin = len(d) - 1 - int(np.argmin(d[::-1]))
    amax = float(edges[last_argmin + start_bin])
    return max(-amax, float(lo)), min(amax, float(hi))


def _private_copy(model_path: Path, folder: Path) -> Path:
    """model_path copied into `folder` (with its external data, if any); the copy's path."""
    copy = folder / "fp32.onnx"
    header = onnx.load(str(model_path), load_external_data=False)
    if not any(uses_external_data(t) for t in header.graph.initializer):
        shutil.copyfile(model_path, copy)  # a byte copy: cheaper than parse and re-serialize
        return copy
    model = onnx.load(str(model_path))
    onnx.save(model, str(copy), save_as_external_data=True, location="fp32.onnx.data")
    return copy


def quantized_nodes(model: onnx.ModelProto, config: QuantizeConfig) -> set[str]:
    """Names of the nodes that run in INT8: config.nodes_to_quantize (every node when None) less config.exclude."""
    chosen = {n.name for n in model.graph.node} if config.nodes_to_quantize is None else set(config.nodes_to_quantize)
    return chosen - set(config.exclude)


def quantize(model_path: Path, out_path: Path, ranges: dict[str, Any], config: QuantizeConfig) -> onnx.ModelProto:
    """Write a Q/DQ INT8 model of `model_path` to `out_path` from cached `ranges`; return it.

    config.placement 'tensorrt' (the default): Q/DQ where TensorRT's placement rules put them
    (calib/placement.py); 'ort': where ONNX Runtime's quantize_static puts them."""
    method_params(config.method)
    if config.placement not in PLACEMENTS:
        raise UsageError(f"placement {config.placement!r}: choose one of {', '.join(PLACEMENTS)}")
    model = onnx.load(str(model_path))
    if config.placement == "tensorrt":
        converted = placement.insert_qdq(model, placement.plan_tensorrt(model, quantized_nodes(model, config)), ranges)
        onnx.save(converted, str(out_path))
        return converted
    require_calibration_cache_api()
    kept_fp32 = set(config.exclude)
    if config.nodes_to_quantize is not None:
        chosen = set(config.nodes_to_quantize)
        kept_fp32 |= {n.name for n in model.graph.node if n.name not in chosen}
    untie_excluded_weights(model, kept_fp32)
    with tempfile.TemporaryDirectory(prefix="retinanet_trt.quant.") as tmp:
        src = Path(tmp) / "fp32.onnx"
        onnx.save(model, str(src))
        cache = Path(tmp) / "ranges.json"
        cache.write_text(json.dumps(ranges))
        with _quiet_ort_logging():
            quantize_static(
                str(src), str(out_path), None,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=config.nodes_to_quantize or None,
                nodes_to_exclude=list(config.exclude),
                calibrate_method=METHODS[config.method],
                calibration_cache_path=str(cache),
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "QuantizeBias": False,
                    # ORT drops a Relu between Q/DQ only for asymmetric ranges; explicit, changes nothing here.
                    "QDQKeepRemovableActivations": True,
                },
            )
    return onnx.load(str(out_path))


def untie_excluded_weights(model: onnx.ModelProto, excluded: set[str]) -> int:
    """Give excluded nodes their own copy of weights they share with quantized nodes.

    The head's convs are shared over FPN levels, so one initializer feeds p3..p7. ORT puts a
    DequantizeLinear on a quantized weight and feeds every user from it, which would leave an
    excluded level computing with INT8-rounded weights. Returns the number of copies made.
    """
    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits:
                users.setdefault(name, []).append(node)
    copies = 0
    for name, nodes in users.items():
        if len(nodes) < 2 or all(n.name in excluded for n in nodes) or not any(n.name in excluded for n in nodes):
            continue
        for node in nodes:
            if node.name not in excluded:
                continue
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[name])
            copy.name = f"{name}.fp32.{copies}"
            model.graph.initializer.append(copy)
            node.input[:] = [copy.name if i == name else i for i in node.input]
            copies += 1
    return copies
