"""CUDA runtime calls through cuda-python: device queries, a stream, events, device and pinned buffers, graphs.

cuda-python is used rather than pycuda because it ships binary wheels (pycuda must be compiled
against a CUDA toolkit, which Jetson images and slim containers often lack) and because TensorRT's
own samples moved to it in 10.13/10.14. The bindings live in ``cuda.bindings.runtime`` since
cuda-python 12.6 and in ``cuda.cudart`` before (removed in 13.0); both expose the same calls.
Every call returns ``(error, *values)``; `_call` turns a non-zero error into a CudaError.

Imported lazily by the TensorRT backend and the build step; importing this module needs nothing.
"""

from __future__ import annotations

import ctypes
from types import ModuleType
from typing import Any

import numpy as np

from retinanet_trt.optional import MissingPackage, install_hint, requires

INSTALL_HINT = install_hint("cuda")


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and CUDA's own error text."""


_runtime: ModuleType | None = None


def runtime() -> ModuleType:
    """The cuda-python runtime module (new or old location); MissingPackage (a one-line UsageError,
    also an ImportError) naming the install when cuda-python is missing."""
    global _runtime
    if _runtime is None:
        with requires("cuda"):
            try:
                from cuda.bindings import runtime as rt
            except ImportError:
                from cuda import cudart as rt  # cuda-python < 12.6
        _runtime = rt
    return _runtime


def _call(name: str, *args: Any) -> Any:
    """Run runtime().<name>(*args); return its value(s) after the error code, raise CudaError on failure."""
    rt = runtime()
    result = getattr(rt, name)(*args)
    err, values = result[0], result[1:]
    if err != rt.cudaError_t.cudaSuccess:
        text = rt.cudaGetErrorString(err)[1]
        raise CudaError(f"{name} failed: {text.decode() if isinstance(text, bytes) else text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def gpu_available() -> tuple[bool, str]:
    """(True, device name) when cuda-python is installed and a CUDA device answers; else (False, why)."""
    try:
        runtime()
    except MissingPackage as exc:
        return False, str(exc)
    try:
        count = _call("cudaGetDeviceCount")
    except CudaError as exc:
        return False, f"no usable CUDA GPU ({exc})"
    if count == 0:
        return False, "no CUDA GPU found"
    return True, device_info(0)["name"]


def _version_text(number: int) -> str:
    # CUDA encodes versions as 1000 * major + 10 * minor (12060 -> "12.6").
    return f"{number // 1000}.{(number % 1000) // 10}"


def device_info(device: int = 0) -> dict[str, Any]:
    """Name, compute capability, memory, integrated (Jetson) and CUDA runtime/driver versions of a device."""
    prop = _call("cudaGetDeviceProperties", device)
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {
        "name": name.rstrip("\x00").strip(),
        "compute_capability": f"{prop.major}.{prop.minor}",
        "total_memory_gb": round(prop.totalGlobalMem / 2**30, 2),
        "integrated": bool(prop.integrated),
        "cuda_runtime_version": _version_text(_call("cudaRuntimeGetVersion")),
        "cuda_driver_version": _version_text(_call("cudaDriverGetVersion")),
    }


def set_device(device: int) -> None:
    _call("cudaSetDevice", device)


class Stream:
    """One non-blocking CUDA stream; `handle` is the integer TensorRT's execute_async_v3 expects."""

    def __init__(self) -> None:
        # Non-blocking: the legacy default stream must not serialise our copies and kernels.
        self._stream = _call("cudaStreamCreateWithFlags", runtime().cudaStreamNonBlocking)

    @property
    def raw(self) -> Any:
        return self._stream

    @property
    def handle(self) -> int:
        return int(self._stream)

    def synchronize(self) -> None:
        _call("cudaStreamSynchronize", self._stream)

    def close(self) -> None:
        if self._stream is not None:
            _call("cudaStreamDestroy", self._stream)
            self._stream = None


class Event:
    """A CUDA event for GPU-side timing of work queued on a stream."""

    def __init__(self) -> None:
        self._event = _call("cudaEventCreate")

    def record(self, stream: Stream) -> None:
        _call("cudaEventRecord", self._event, stream.raw)

    def synchronize(self) -> None:
        _call("cudaEventSynchronize", self._event)

    def ms_since(self, start: Event) -> float:
        """Milliseconds between `start` and this event (both recorded and complete)."""
        return float(_call("cudaEventElapsedTime", start._event, self._event))

    def close(self) -> None:
        if self._event is not None:
            _call("cudaEventDestroy", self._event)
            self._event = None


class DeviceBuffer:
    """`nbytes` of device memory at integer address `ptr`."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)  # cudaMalloc(0) returns no usable address
        self.ptr = int(_call("cudaMalloc", self.nbytes))

    def close(self) -> None:
        if self.ptr:
            _call("cudaFree", self.ptr)
            self.ptr = 0


class PinnedBuffer:
    """Page-locked host memory, so async copies really overlap; `view` gives a NumPy array over it."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(_call("cudaMallocHost", self.nbytes))

    def view(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
        """A NumPy array of `shape` and `dtype` over the start of the buffer (no copy)."""
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize > self.nbytes:
            raise ValueError(f"{shape} {dtype} needs {count * dtype.itemsize} bytes, buffer has {self.nbytes}")
        raw = (ctypes.c_ubyte * (count * dtype.itemsize)).from_address(self.ptr)
        return np.ctypeslib.as_array(raw).view(dtype).reshape(shape)

    def close(self) -> None:
        if self.ptr:
            _call("cudaFreeHost", self.ptr)
            self.ptr = 0


def copy_h2d_async(dst: DeviceBuffer, src: PinnedBuffer, nbytes: int, stream: Stream) -> None:
    _call("cudaMemcpyAsync", dst.ptr, src.ptr, nbytes, runtime().cudaMemcpyKind.cudaMemcpyHostToDevice, stream.raw)


def copy_d2h_async(dst: PinnedBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    _call("cudaMemcpyAsync", dst.ptr, src.ptr, nbytes, runtime().cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.raw)


class CudaGraph:
    """Work captured once from a stream and replayed with one launch (fewer CPU launch costs)."""

    def __init__(self) -> None:
        self._graph: Any = None
        self._exec: Any = None

    def begin_capture(self, stream: Stream) -> None:
        self.close()
        # Thread-local mode: other threads' CUDA calls (e.g. a second backend) do not break the capture.
        mode = runtime().cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _call("cudaStreamBeginCapture", stream.raw, mode)

    def end_capture(self, stream: Stream) -> None:
        self._graph = _call("cudaStreamEndCapture", stream.raw)
        self._exec = _call("cudaGraphInstantiate", self._graph, 0)

    @property
    def ready(self) -> bool:
        return self._exec is not None

    def launch(self, stream: Stream) -> None:
        _call("cudaGraphLaunch", self._exec, stream.raw)

    def close(self) -> None:
        if self._exec is not None:
            _call("cudaGraphExecDestroy", self._exec)
            self._exec = None
        if self._graph is not None:
            _call("cudaGraphDestroy", self._graph)
            self._graph = None
