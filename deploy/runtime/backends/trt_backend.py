"""TensorRT engine backend: one engine, one CUDA stream, pinned host and device buffers, optional CUDA graph.

TensorRT is reached only through retinanet_trt.tensorrt.engine and CUDA only through retinanet_trt.tensorrt.cuda
(cuda-python; see that module for why not pycuda), both imported when a backend is created. What the
engine file says it is (sidecar, spec, bindings) is checked by trt_sidecar.py first.

Per run: copy the batch into pinned memory, then on the stream: H2D, execute_async_v3 (or replay
of a CUDA graph captured for this input shape), D2H of every output; CUDA events around each part
fill StageTimes. Buffers are sized for the largest shape of every optimization profile, so a shape
change within the profiles only sets the new input shape (and the profile, when it changes).

Outputs whose shape depends on the data (TensorRT reports -1 even after the input shape is set,
e.g. behind INMSLayer) get no fixed buffer: TensorRT asks a `_GrowingOutput` for memory during
execute_async_v3 (through trt_engine's IOutputAllocator) and reports the real shape; after the
stream is synchronized exactly that shape is copied back. Such engines cannot use CUDA graphs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.runtime.backends.base import StageTimes
from retinanet_trt.runtime.backends.trt_sidecar import check_bindings, check_sidecar, engine_spec, largest_profile_hw
from retinanet_trt.spec import ModelSpec

if TYPE_CHECKING:
    from retinanet_trt.tensorrt import cuda as cuda_rt
    from retinanet_trt.tensorrt.engine import LayerTimes, ShapeRange, TensorInfo


class _GrowingOutput:
    """Device and pinned host memory of one data-dependent output, grown when TensorRT asks for more.

    A replaced device buffer is only retired during the run (TensorRT may still read the old one
    while it reallocates) and freed by `release_retired` once the stream is synchronized.
    """

    def __init__(self, info: TensorInfo) -> None:
        self.info = info
        self.device: cuda_rt.DeviceBuffer | None = None
        self.host: cuda_rt.PinnedBuffer | None = None
        self.shape: tuple[int, ...] | None = None  # as notified for the current run
        self._retired: list[cuda_rt.DeviceBuffer] = []

    def reallocate(self, name: str, nbytes: int, alignment: int) -> int:
        """TensorRT's request for `nbytes`: the current buffer when it is big enough, else one at least twice as big."""
        from retinanet_trt.tensorrt import cuda as cuda_rt

        if self.device is None or nbytes > self.device.nbytes:
            grown = cuda_rt.DeviceBuffer(max(nbytes, 2 * self.device.nbytes if self.device else nbytes))
            if grown.ptr % alignment:
                grown.close()
                raise RuntimeError(f"cudaMalloc returned an address not aligned to {alignment} bytes")
            if self.device is not None:
                self._retired.append(self.device)
            self.device = grown
        return self.device.ptr

    def notify(self, name: str, shape: tuple[int, ...]) -> None:
        self.shape = tuple(int(d) for d in shape)

    def nbytes(self) -> int:
        assert self.shape is not None
        return int(np.prod(self.shape, dtype=np.int64)) * self.info.dtype.itemsize

    def copy_back(self, stream: cuda_rt.Stream) -> None:
        """Queue the D2H copy of exactly the notified shape (call after the stream is synchronized)."""
        from retinanet_trt.tensorrt import cuda as cuda_rt

        if self.shape is None or min(self.shape, default=0) < 0:
            raise UsageError(f"TensorRT did not report the shape of output {self.info.name} after the run")
        nbytes = self.nbytes()
        if nbytes == 0:
            return
        if self.device is None or nbytes > self.device.nbytes:
            raise UsageError(f"output {self.info.name} has shape {self.shape} but TensorRT asked for fewer bytes")
        if self.host is None or nbytes > self.host.nbytes:
            if self.host is not None:
                self.host.close()
            self.host = cuda_rt.PinnedBuffer(self.device.nbytes)
        cuda_rt.copy_d2h_async(self.host, self.device, nbytes, stream)

    def result(self) -> np.ndarray:
        assert self.shape is not None
        if self.nbytes() == 0 or self.host is None:
            return np.zeros(self.shape, self.info.dtype)
        return self.host.view(self.info.dtype, self.shape).copy()

    def release_retired(self) -> None:
        for buf in self._retired:
            buf.close()
        self._retired.clear()

    def close(self) -> None:
        self.release_retired()
        for buf in (self.device, self.host):
            if buf is not None:
                buf.close()
        self.device = self.host = None


def _fits(shape: tuple[int, ...], rng: ShapeRange) -> bool:
    lo, _, hi = rng
    return len(shape) == len(lo) and all(a <= s <= b for s, a, b in zip(shape, lo, hi, strict=True))


class TrtBackend:
    """images (N, 3, H, W) float32 -> raw head outputs, from a TensorRT engine built by trt-build."""

    name = "trt"

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        *,
        device: int = 0,
        cuda_graph: bool = False,
        plugin_libs: Sequence[str | os.PathLike[str]] = (),
        verbose: bool = False,
        spec: ModelSpec | None = None,
        onnx: str | os.PathLike[str] | None = None,
    ) -> None:
        from retinanet_trt.tensorrt import cuda as cuda_rt
        from retinanet_trt.tensorrt import engine as trt_engine

        self.path = Path(engine_path)
        if not self.path.is_file():
            raise UsageError(f"engine {self.path} not found; build one with trt-build")
        self.sidecar, self.spec = engine_spec(self.path, spec, onnx)
        ok, why = trt_engine.available()
        if not ok:
            raise UsageError(f"backend trt: {why}")
        cuda_rt.set_device(device)
        self.device = cuda_rt.device_info(device)
        if self.sidecar is not None:
            check_sidecar(self.sidecar, self.path, trt_version=trt_engine.version(), gpu_name=self.device["name"])
        options = (self.sidecar or {}).get("options", {})
        libs = [*options.get("plugin_libs", []), *(os.fspath(p) for p in plugin_libs)]
        self._engine = trt_engine.LoadedEngine(
            self.path.read_bytes(),
            dla_core=options.get("dla_core"),
            version_compatible=bool(options.get("version_compatible")),
            plugin_libs=libs,
            verbose=verbose,
        )
        inputs = [t for t in self._engine.tensors if t.is_input]
        if len(inputs) != 1:
            raise UsageError(f"{self.path.name} has {len(inputs)} inputs; this backend feeds one image batch")
        self._input: TensorInfo = inputs[0]
        self._outputs = [t for t in self._engine.tensors if not t.is_input]
        check_bindings(self.spec, self._input, self._outputs, self.path.name)
        # (N, 3, H, W) float32 normalised on the host, or (N, H, W, 4) uint8 (runtime/uint8_input.py)
        self.input_format = "uint8_nhwc" if self._input.dtype == np.uint8 else "float32_nchw"
        self._channel_axis = 3 if self.input_format == "uint8_nhwc" else 1
        fixed = self._input.shape
        self.ranges: list[ShapeRange] = (
            self._engine.profile_ranges(self._input.name) if -1 in fixed else [(fixed, fixed, fixed)]
        )
        self.fixed_input_hw = self._fixed_hw()
        # the pre-process keeps every image within it (scaled down further, or refused, per oversize)
        self.max_input_hw = None if self.fixed_input_hw else self._max_hw()

        self._stream = cuda_rt.Stream()
        self._events = [cuda_rt.Event() for _ in range(4)]
        self._device_buffers: dict[str, cuda_rt.DeviceBuffer] = {}
        self._host_buffers: dict[str, cuda_rt.PinnedBuffer] = {}
        self._growing: dict[str, _GrowingOutput] = {}  # data-dependent outputs
        self._device_index = device
        self._pinned_sets: dict[int, cuda_rt.PinnedBuffer] = {}  # host_outputs() arrays by address
        self._allocate()
        if cuda_graph and self._growing:
            raise UsageError(f"{self.path.name} has data-dependent outputs ({', '.join(self._growing)}); "
                             f"CUDA graphs need fixed-size outputs, run it without cuda_graph")
        self._graph = cuda_rt.CudaGraph() if cuda_graph else None
        self._profile = -1  # forces set_profile on the first run
        self._shape: tuple[int, ...] | None = None
        self._out_shapes: dict[str, tuple[int, ...]] = {}
        self.last_times = StageTimes()

    # ------------------------------------------------------------------ set-up
    def _fixed_hw(self) -> tuple[int, int] | None:
        """H, W when every profile pins them (the pre-process then pads to exactly this size)."""
        h = 1 if self.input_format == "uint8_nhwc" else 2
        sizes = {(lo[h], lo[h + 1]) for lo, _, _ in self.ranges}
        if len(sizes) == 1 and all(lo[h : h + 2] == hi[h : h + 2] for lo, _, hi in self.ranges):
            return sizes.pop()
        return None

    def _max_hw(self) -> tuple[int, int]:
        """H, W of the largest input a profile accepts."""
        return largest_profile_hw([rng[2] for rng in self.ranges], 1 if self.input_format == "uint8_nhwc" else 2)

    def _allocate(self) -> None:
        """Buffers for the largest shapes of all profiles, bound once (addresses never change);
        an output allocator for each output whose shape stays unresolved (-1) for some profile."""
        from retinanet_trt.tensorrt import cuda as cuda_rt

        need = {t.name: 0 for t in self._engine.tensors}
        dynamic: set[str] = set()
        for index, (_, _, hi) in enumerate(self.ranges):
            self._engine.set_profile(index, self._stream.handle)
            self._engine.set_input_shape(self._input.name, hi)
            need[self._input.name] = max(need[self._input.name], int(np.prod(hi)) * self._input.dtype.itemsize)
            for out in self._outputs:
                shape = self._engine.tensor_shape(out.name)
                if min(shape, default=0) < 0:
                    dynamic.add(out.name)
                else:
                    need[out.name] = max(need[out.name], int(np.prod(shape)) * out.dtype.itemsize)
        self._stream.synchronize()
        for out in self._outputs:
            if out.name in dynamic:
                del need[out.name]
                growing = self._growing[out.name] = _GrowingOutput(out)
                self._engine.set_output_allocator(out.name, growing.reallocate, growing.notify)
        for name, nbytes in need.items():
            self._device_buffers[name] = cuda_rt.DeviceBuffer(nbytes)
            self._host_buffers[name] = cuda_rt.PinnedBuffer(nbytes)
            self._engine.set_tensor_address(name, self._device_buffers[name].ptr)

    def attach_profiler(self) -> LayerTimes:
        """Per-layer times of every later run (TensorRT IProfiler); turns CUDA graph replay off."""
        if self._graph is not None:
            self._graph.close()
            self._graph = None
        return self._engine.attach_profiler()

    # ------------------------------------------------------------------ inference
    def bind_thread(self) -> None:
        """Make this engine's GPU current in the calling thread (the host pipeline runs the
        backend in a thread of its own; CUDA's current device is per thread)."""
        from retinanet_trt.tensorrt import cuda as cuda_rt

        cuda_rt.set_device(self._device_index)

    def host_outputs(self, input_shape: tuple[int, ...]) -> dict[str, np.ndarray] | None:
        """Page-locked arrays for every output of one run at input_shape, allocated once: pass them
        to run(images, outputs=...) and the D2H copies land in them, with no host copy after; the
        caller owns them until it passes them again (runtime/pipeline.py pools them). None where
        that does not apply: data-dependent or non-float32 outputs, a shape outside the profiles."""
        from retinanet_trt.tensorrt import cuda as cuda_rt

        shape = tuple(int(d) for d in input_shape)
        profile = next((i for i, rng in enumerate(self.ranges) if _fits(shape, rng)), None)
        if profile is None or self._growing or any(o.dtype != np.float32 for o in self._outputs):
            return None
        self._select(shape, profile)
        arrays = {}
        for out in self._outputs:
            out_shape = self._out_shapes[out.name]
            buf = cuda_rt.PinnedBuffer(int(np.prod(out_shape)) * out.dtype.itemsize)
            arrays[out.name] = buf.view(out.dtype, out_shape)
            self._pinned_sets[arrays[out.name].ctypes.data] = buf  # the array's address (buf.ptr on a GPU)
        return arrays

    def run(self, images: np.ndarray, outputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """outputs: a set from host_outputs() for this input shape; the results are then those
        arrays (written by the D2H copies), else fresh arrays."""
        channels = 4 if self.input_format == "uint8_nhwc" else 3
        if images.ndim != 4 or images.shape[self._channel_axis] != channels:
            want = "(N, H, W, 4) uint8" if channels == 4 else "(N, 3, H, W)"
            raise UsageError(f"expected images {want}, got shape {images.shape}")
        shape = tuple(int(d) for d in images.shape)
        for index, rng in enumerate(self.ranges):
            if _fits(shape, rng):
                return self._run(images, index, outputs)
        single = (1, *shape[1:])
        fits_one = [i for i, rng in enumerate(self.ranges) if _fits(single, rng)]
        if shape[0] > 1 and fits_one:
            # An engine built for batch 1: run the images one by one, as the ONNX Runtime backend does.
            parts, times = [], []
            for i in range(shape[0]):
                parts.append(self._run(images[i : i + 1], fits_one[0]))
                times.append(self.last_times)
            self.last_times = StageTimes(
                h2d_ms=sum(t.h2d_ms for t in times),
                compute_ms=sum(t.compute_ms for t in times),
                d2h_ms=sum(t.d2h_ms for t in times),
            )
            return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        ranges = ", ".join("/".join("x".join(map(str, s)) for s in rng) for rng in self.ranges)
        raise UsageError(f"input {'x'.join(map(str, shape))} is outside the engine's shape ranges ({ranges}); "
                         f"rebuild with trt-build --shapes")

    def _select(self, shape: tuple[int, ...], profile: int) -> None:
        """Set the optimization profile and the input shape (when they change) and the output shapes."""
        stream = self._stream
        if profile != self._profile:
            self._engine.set_profile(profile, stream.handle)
            self._profile, self._shape = profile, None
        if shape != self._shape:
            self._engine.set_input_shape(self._input.name, shape)
            # -1 stays in the shapes of data-dependent outputs; TensorRT notifies their real shape.
            self._out_shapes = {o.name: self._engine.tensor_shape(o.name) for o in self._outputs}
            self._shape = shape
            if self._graph is not None:
                self._graph.close()  # a graph replays one fixed shape; capture again on the next run

    def _run(self, images: np.ndarray, profile: int, outputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        from retinanet_trt.tensorrt import cuda as cuda_rt

        stream, (start, after_h2d, after_compute, end) = self._stream, self._events
        shape = tuple(int(d) for d in images.shape)
        self._select(shape, profile)
        targets: dict[str, cuda_rt.PinnedBuffer] = {}
        if outputs is not None:  # D2H straight into the caller's page-locked arrays (host_outputs)
            for out in self._outputs:
                arr = outputs[out.name]
                buf = self._pinned_sets.get(arr.ctypes.data)
                if buf is None or arr.shape != self._out_shapes[out.name] or arr.dtype != out.dtype:
                    raise UsageError(f"outputs[{out.name!r}] is not an array host_outputs() gave for this input shape")
                targets[out.name] = buf

        t0 = time.perf_counter()
        host_in = self._host_buffers[self._input.name]
        np.copyto(host_in.view(self._input.dtype, shape), images, casting="same_kind")
        stage_ms = (time.perf_counter() - t0) * 1e3
        nbytes_in = int(np.prod(shape)) * self._input.dtype.itemsize

        start.record(stream)
        cuda_rt.copy_h2d_async(self._device_buffers[self._input.name], host_in, nbytes_in, stream)
        after_h2d.record(stream)
        for growing in self._growing.values():
            growing.shape = None
        self._execute(stream)
        after_compute.record(stream)
        for out in self._outputs:
            if out.name not in self._growing:
                nbytes = int(np.prod(self._out_shapes[out.name])) * out.dtype.itemsize
                host = targets.get(out.name) or self._host_buffers[out.name]
                cuda_rt.copy_d2h_async(host, self._device_buffers[out.name], nbytes, stream)
        if self._growing:
            # The sizes TensorRT reported are final once the run is done: copy back exactly those.
            stream.synchronize()
            for name, growing in self._growing.items():
                if growing.shape is None and min(self._out_shapes[name], default=0) >= 0:
                    growing.shape = self._out_shapes[name]  # resolved for this profile and not notified
                growing.copy_back(stream)
        end.record(stream)
        end.synchronize()
        for growing in self._growing.values():
            growing.release_retired()
        self.last_times = StageTimes(
            h2d_ms=after_h2d.ms_since(start),
            compute_ms=after_compute.ms_since(after_h2d),
            d2h_ms=end.ms_since(after_compute),
            extra={"host_staging_ms": stage_ms},
        )
        if outputs is not None:
            return {out.name: outputs[out.name] for out in self._outputs}
        results = {}
        for out in self._outputs:
            if out.name in self._growing:
                results[out.name] = self._growing[out.name].result()
                if out.dtype == np.float16:
                    results[out.name] = results[out.name].astype(np.float32)
                continue
            view = self._host_buffers[out.name].view(out.dtype, self._out_shapes[out.name])
            # Copy out of the pinned buffer (the next run overwrites it); FP16 heads become FP32 for the post-process.
            results[out.name] = view.astype(np.float32) if out.dtype == np.float16 else view.copy()
        return results

    def _execute(self, stream: cuda_rt.Stream) -> None:
        if self._graph is None:
            self._engine.execute(stream.handle)
            return
        if not self._graph.ready:
            # TensorRT may set up resources on the first enqueue after a shape change; keep that out of the graph.
            self._engine.execute(stream.handle)
            self._graph.begin_capture(stream)
            try:
                self._engine.execute(stream.handle)
            finally:
                self._graph.end_capture(stream)
        self._graph.launch(stream)

    def close(self) -> None:
        """Free the graph, buffers, events and stream, then the engine."""
        if self._graph is not None:
            self._graph.close()
        self._stream.synchronize()
        for buffers in (self._device_buffers, self._host_buffers):
            for buf in buffers.values():
                buf.close()
            buffers.clear()
        for growing in self._growing.values():
            growing.close()
        self._growing.clear()
        for buf in self._pinned_sets.values():
            buf.close()
        self._pinned_sets.clear()
        for event in self._events:
            event.close()
        self._stream.close()
        self._engine.close()
