"""INT8 as explicit quantization: Q/DQ nodes with TensorRT's conventions, made by ONNX Runtime.

Why ONNX Runtime's quantizer and not NVIDIA Model Optimizer: `nvidia-modelopt[onnx]` installs
onnxruntime-gpu beside onnxruntime (both own the `onnxruntime` module) and pins an older onnx, so
one install would not leave one working onnxruntime (docs/precision.md). ORT's QDQ output is
TensorRT-compatible with: QInt8 activations and weights, both symmetric (zero point 0),
per-channel weights (axis 0), reduce_range off, and biases left in float (TensorRT rejects an
int32 DequantizeLinear on a bias).

Two steps, so calibration can be cached and reused for any set of quantized nodes:
`calibrate` runs the FP32 model over the calibration inputs and returns activation ranges for
every tensor; `quantize` writes a Q/DQ model from those ranges and a node exclusion list.
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

from retinanet_trt.errors import UsageError

METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# Histogram settings are part of the method (and of the cache key). ORT's defaults, written out.
METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "minmax": {},
    "entropy": {"num_bins": 128, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.999},
}
# NVIDIA's tools call min/max calibration "max" (ModelOpt, TAO); accept their name too.
METHOD_ALIASES = {"max": "minmax"}
CHUNK = 2  # images per collect step: ORT keeps every tensor of a step in memory (R50: ~0.4 GB/image)


@dataclass
class QuantizeConfig:
    """How the Q/DQ model is made. exclude: node names kept in FP32."""

    method: str = "minmax"
    exclude: list[str] = field(default_factory=list)
    nodes_to_quantize: list[str] | None = None  # None: every supported node not excluded


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

    ORT's create_calibrator writes `<stem>-inferred.onnx` beside the model it is given, then deletes
    it: that would clobber a user's file of that name, fail in a read-only folder and race with a
    second run on the same model. So it is given a private copy in a temporary folder.
    """
    params = method_params(method)
    require_calibration_cache_api()
    from onnxruntime.quantization.calibrate import save_tensors_data

    with tempfile.TemporaryDirectory(prefix="retinanet_trt.calib.") as tmp:
        model = _private_copy(Path(model_path), Path(tmp))
        input_name = onnx.load(str(model), load_external_data=False).graph.input[0].name
        calibrator = create_calibrator(
            model, _op_types(), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=METHODS[method], extra_options={"symmetric": True, **params},
        )
        bar = tqdm(total=len(inputs), desc=f"calibrating ({method})", unit="run", disable=not progress, leave=False)
        for chunk in _same_shape_chunks(inputs, CHUNK):
            calibrator.collect_data(_Reader(input_name, chunk))
            bar.update(len(chunk))
        bar.close()
        ranges = calibrator.compute_data()
        path = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, path)
        return json.loads(path.read_text())


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


def quantize(model_path: Path, out_path: Path, ranges: dict[str, Any], config: QuantizeConfig) -> onnx.ModelProto:
    """Write a Q/DQ INT8 model of `model_path` to `out_path` from cached `ranges`; return it."""
    method_params(config.method)
    require_calibration_cache_api()
    model = onnx.load(str(model_path))
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
                    # Keep Relu between Q/DQ pairs: TensorRT fuses it itself, and removing it is
                    # only exact for asymmetric ranges.
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
