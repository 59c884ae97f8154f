"""Software and hardware that a figure was measured with, recorded in every report and benchmark."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Sequence
from typing import Any

# Distributions whose versions matter to a result; the ones not installed are left out.
DISTRIBUTIONS = (
    "retinanet-trt", "numpy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxsim",
    "onnxconverter-common", "pycocotools", "pillow", "scikit-image", "opencv-python-headless",  # they resize
    "cuda-python", "cuda-bindings", "tensorrt", "nvidia-modelopt",
)


def installed_versions(distributions: Sequence[str]) -> dict[str, str]:
    """{distribution: version} of those installed, read from their metadata (nothing is imported)."""
    found = {}
    for dist in distributions:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def package_versions() -> dict[str, Any]:
    """{"python": ..., "platform": ..., "cpu": ..., distribution: version, ...} without importing them."""
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), **installed_versions(DISTRIBUTIONS)}


def environment() -> dict[str, Any]:
    """package_versions plus what this process can run: ONNX Runtime providers, torch threads,
    TensorRT and GPU availability (with the reason when missing). Imports those packages."""
    import onnxruntime

    from retinanet_trt.tensorrt import cuda as cuda_rt
    from retinanet_trt.tensorrt import engine as trt_engine

    out = package_versions()
    out["ort_providers"] = onnxruntime.get_available_providers()
    try:
        import torch

        out["torch_threads"] = torch.get_num_threads()
    except ImportError:
        out["torch"] = None
    ok, why = trt_engine.available()
    out["tensorrt"] = trt_engine.version() if ok else None
    if not ok:
        out["tensorrt_note"] = why
    gpu_ok, gpu = cuda_rt.gpu_available()
    out["gpu"] = cuda_rt.device_info(0) if gpu_ok else None
    if not gpu_ok:
        out["gpu_note"] = gpu
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# CPU features that change ONNX Runtime's integer kernels (fused Q/DQ saturates without VNNI).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni")


def cpu_flags() -> dict[str, bool]:
    """Which of CPU_FLAGS /proc/cpuinfo lists (all False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((set(line.split(":", 1)[1].split()) for line in fh if line.startswith("flags")), set())
    except OSError:
        flags = set()
    return {f: f in flags for f in CPU_FLAGS}
