"""ONNX Runtime backend: CPU, CUDA or TensorRT execution provider over one ONNX file."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from retinanet_trt.errors import UsageError
from retinanet_trt.optional import ORT_GPU_HINT, requires
from retinanet_trt.runtime.backends.base import StageTimes
from retinanet_trt.spec.metadata import resolve_spec

PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}


# How a CPU session computes. "simulated": graph optimisations off, so every QuantizeLinear /
# DequantizeLinear runs as written (quantize, dequantize, compute in float): the arithmetic
# TensorRT's explicit quantization honours, and the same on every x86 CPU. "fused": ONNX Runtime's
# default optimisations, which fuse Q/DQ into integer kernels (QLinearConv, ConvInteger) whose
# results depend on the CPU (without VNNI they saturate): fast, but a speed figure only.
SIMULATED = "simulated"
FUSED = "fused"
ARITHMETICS = (SIMULATED, FUSED)
ARITHMETIC_LABELS = {
    SIMULATED: "simulated Q/DQ (ONNX Runtime CPU, graph optimisations off): quantize, dequantize, float compute",
    FUSED: "ORT CPU fused integer kernels, speed only",
}
# What every accuracy report (trt-calib, trt-build, sensitivity, mAP) is computed in and cites.
ACCURACY_ARITHMETIC = SIMULATED


def session_options(threads: int = 0, arithmetic: str = FUSED, optimized_model_path: str | None = None):  # type: ignore[no-untyped-def]
    """SessionOptions for `arithmetic` (see ARITHMETIC_LABELS). optimized_model_path: ORT writes the
    graph it will run there, which shows whether Q/DQ was fused (tests check it)."""
    with requires("onnxruntime"):
        import onnxruntime as ort

    if arithmetic not in ARITHMETICS:
        raise UsageError(f"arithmetic {arithmetic!r}: choose one of {', '.join(ARITHMETICS)}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if arithmetic == SIMULATED:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_model_path is not None:
        options.optimized_model_filepath = optimized_model_path
    return options


def ort_session(source: str | bytes, options: Any, providers: list[Any], what: str):  # type: ignore[no-untyped-def]
    """onnxruntime.InferenceSession, with a model ONNX Runtime refuses (a TensorRT-only plugin such
    as EfficientNMS_TRT, an op it lacks, a damaged graph) as one UsageError naming `what`."""
    with requires("onnxruntime"):
        import onnxruntime as ort

    try:
        return ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own pybind error types for every refusal
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        plugin = " (it uses a TensorRT plugin: run it with --backend trt on a GPU host)" if "_TRT" in reason else ""
        raise UsageError(f"ONNX Runtime cannot load {what}{plugin}: {reason[:300]}") from None


def cpu_session(model: str | os.PathLike[str] | bytes | onnx.ModelProto, threads: int = 0,  # type: ignore[no-untyped-def]
                arithmetic: str = FUSED, optimized_model_path: str | None = None):
    """A CPU InferenceSession over a file, serialized bytes or a ModelProto; threads 0 lets ONNX
    Runtime choose. arithmetic: SIMULATED for accuracy, FUSED (ORT's default) for speed.
    Warnings are silenced: Q/DQ insertion leaves unused initializers ORT reports."""

    options = session_options(threads, arithmetic, optimized_model_path)
    options.log_severity_level = 3
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort_session(source, options, ["CPUExecutionProvider"], "the model" if isinstance(source, bytes) else source)


class OrtBackend:
    """images (N, 3, H, W) float32 -> {output name: array} via onnxruntime.

    A static ONNX has a fixed input size (`fixed_input_hw`, used by the pre-process to pad to) and
    maybe a fixed batch; larger batches are then run one image at a time.
    """

    def __init__(self, onnx_path: str | os.PathLike[str], backend: str = "ort-cpu", threads: int = 0, device: int = 0,
                 profile_dir: str | None = None, arithmetic: str = FUSED, spec: Any = None,
                 onnx: str | os.PathLike[str] | None = None) -> None:
        if backend not in PROVIDERS:
            raise UsageError(f"unknown ONNX Runtime backend {backend!r}; choose one of {', '.join(PROVIDERS)}")
        with requires("onnxruntime", f"backend {backend}", None if backend == "ort-cpu" else ORT_GPU_HINT):
            import onnxruntime as ort

        provider = PROVIDERS[backend]
        if provider not in ort.get_available_providers():
            raise UsageError(
                f"{backend}: onnxruntime {ort.__version__} here has no {provider} "
                f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu on a GPU host"
            )
        self.name = backend
        self.path = Path(onnx_path)
        # spec / onnx: for a file without this project's metadata (another tool's quantizer output)
        self.spec = resolve_spec(self.path, spec=spec, onnx_file=onnx)
        # arithmetic SIMULATED: Q/DQ as written (accuracy checks); FUSED: ORT's default (speed)
        self.arithmetic = arithmetic
        options = session_options(threads, arithmetic)
        if profile_dir:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(profile_dir) / "ort_profile")
        # The CUDA and TensorRT providers take the GPU index; the CPU provider has no device to pick.
        providers: list[Any] = ([provider] if provider == "CPUExecutionProvider"
                                else [(provider, {"device_id": device}), "CPUExecutionProvider"])
        self.session = ort_session(str(self.path), options, providers, str(self.path))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        dims = inp.shape
        self.fixed_batch = dims[0] if isinstance(dims[0], int) else None
        # trt-export --input-format uint8: (N, H, W, 4) uint8, normalised in the graph (runtime/uint8_input.py)
        self.input_format = "uint8_nhwc" if inp.type == "tensor(uint8)" else "float32_nchw"
        self.input_dtype = np.uint8 if self.input_format == "uint8_nhwc" else np.float32
        hw_dims = dims[1:3] if self.input_format == "uint8_nhwc" else dims[2:4]
        self.fixed_input_hw = (hw_dims[0], hw_dims[1]) if all(isinstance(d, int) for d in hw_dims) else None
        self.last_times = StageTimes()

    def run(self, images: np.ndarray, outputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """outputs: a set from host_outputs() for this input shape; ONNX Runtime then writes into it
        (IO binding) instead of allocating, and it is returned."""
        t0 = time.perf_counter()
        if self.fixed_batch is not None and images.shape[0] != self.fixed_batch:
            if self.fixed_batch != 1:
                raise UsageError(f"{self.path.name} takes batches of exactly {self.fixed_batch}; got {images.shape[0]}")
            parts = [self.session.run(self.output_names, {self.input_name: images[i : i + 1]}) for i in range(len(images))]
            outs = [np.concatenate(p, axis=0) for p in zip(*parts)]
        elif outputs is not None:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, np.ascontiguousarray(images, self.input_dtype))
            for name in self.output_names:
                out = outputs[name]
                binding.bind_output(name, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
            self.session.run_with_iobinding(binding)
            outs = [outputs[name] for name in self.output_names]
        else:
            outs = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(images, self.input_dtype)})
        self.last_times = StageTimes(compute_ms=(time.perf_counter() - t0) * 1e3)
        return dict(zip(self.output_names, outs))

    def host_outputs(self, input_shape: tuple[int, ...]) -> dict[str, np.ndarray] | None:
        """Arrays for every output of one run at input_shape, to pass back to `run` again and again
        (no allocation per run), or None where the graph's output shapes are not all fixed."""
        shapes = [o.shape for o in self.session.get_outputs()]
        if not all(isinstance(d, int) for shape in shapes for d in shape) or (
                self.fixed_batch is not None and input_shape[0] != self.fixed_batch):
            return None
        dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                  "tensor(int32)": np.int32}
        types = [dtypes.get(o.type) for o in self.session.get_outputs()]
        if any(t is None for t in types):
            return None
        return {name: np.empty(shape, dtype) for name, shape, dtype in zip(self.output_names, shapes, types, strict=True)}

    def end_profiling(self) -> str:
        """Stop ORT profiling and return the JSON trace path (per-node times)."""
        return str(self.session.end_profiling())

    def close(self) -> None:
        pass
