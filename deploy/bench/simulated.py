"""A simulated device, for timing the host pipeline as it would run beside a fast GPU. Never accuracy.

On a GPU host TensorRT runs R50-FPN in a few milliseconds, so what limits images/s is the host:
decode, resize, normalise, copy, post-process. This machine has no GPU; SimulatedDevice stands in
for one. Each run does the host work a TensorRT backend does (copy the batch into its staging
buffer, page-locked on a GPU), then sleeps `device_ms` with the GIL released (where the GPU would
copy in, compute and copy out), and returns outputs of the right shapes *recorded from one real
run of the model* (the same outputs for every batch, whatever its images). The output sets it hands
to the pipeline (host_outputs) are filled once, as the D2H copies of a real engine fill page-locked
buffers without host work.

It is labelled a simulation in every report (SIMULATION_NOTE), it is not a Detector.load backend,
and evaluate() refuses it (backend.simulated): its detections are not the image's.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.runtime.backends.base import StageTimes
from retinanet_trt.spec import ModelSpec

SIMULATION_NOTE = ("SIMULATED DEVICE: no network runs; each batch sleeps the given milliseconds (GIL released) and "
                   "returns outputs recorded from one real run of the model. For timing the host pipeline only; "
                   "never used for accuracy")
# 10 s per batch is slower than any device worth simulating; 1e9 would sleep for weeks.
MAX_DEVICE_MS = 10_000.0


class SimulatedDevice:
    """Backend stand-in: run(images) sleeps device_ms and returns `recorded` (one image's outputs,
    repeated over the batch). input_shape: the (1, ...) network input the outputs belong to."""

    simulated = True

    def __init__(self, spec: ModelSpec, recorded: dict[str, np.ndarray], device_ms: float, *,
                 input_shape: tuple[int, ...], input_format: str, fixed_input_hw: tuple[int, int] | None) -> None:
        if not 0 <= device_ms <= MAX_DEVICE_MS:  # also refuses NaN, which time.sleep would
            raise UsageError(f"--simulate-device {device_ms}: give milliseconds in 0..{MAX_DEVICE_MS:g}")
        self.name = f"simulated {device_ms:g} ms"
        self.spec = spec
        self.device_ms = float(device_ms)
        self.input_format = input_format
        self.fixed_input_hw = fixed_input_hw
        self._input_shape = tuple(int(d) for d in input_shape)
        self._recorded = {k: np.ascontiguousarray(v[:1]) for k, v in recorded.items()}
        self._staging: np.ndarray | None = None
        self.last_times = StageTimes()

    def _check(self, images: np.ndarray) -> None:
        if tuple(images.shape[1:]) != self._input_shape[1:]:
            raise UsageError(f"the simulated device recorded outputs for input {list(self._input_shape[1:])}, "
                             f"got a batch of {list(images.shape[1:])}; use a fixed-size model (or images of one size)")

    def host_outputs(self, input_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """A reusable output set for a batch of input_shape, filled with the recorded outputs."""
        n = int(input_shape[0])
        return {k: np.repeat(v, n, axis=0) for k, v in self._recorded.items()}

    def run(self, images: np.ndarray, outputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        self._check(images)
        t0 = time.perf_counter()
        if self._staging is None or self._staging.shape[0] < images.shape[0]:
            self._staging = np.empty(images.shape, images.dtype)
        np.copyto(self._staging[: images.shape[0]], images)  # what TrtBackend copies into page-locked memory
        t1 = time.perf_counter()
        time.sleep(self.device_ms / 1e3)  # H2D + execute + D2H on the device; the GIL is free meanwhile
        t2 = time.perf_counter()
        if outputs is None:
            outputs = self.host_outputs(tuple(images.shape))
        self.last_times = StageTimes(compute_ms=(t2 - t1) * 1e3, extra={"host_staging_ms": (t1 - t0) * 1e3})
        return outputs

    def bind_thread(self) -> None:
        pass

    def close(self) -> None:
        self._staging = None


def record_outputs(detector: Any, image: Any) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
    """One real run of `detector` (its own backend) on `image`: (outputs, the input shape)."""
    batch = detector.prepare([image])
    outputs = detector.backend.run(batch.images)
    return {k: np.array(v, copy=True) for k, v in outputs.items()}, tuple(int(d) for d in batch.images.shape)
