"""Detector: one API over every backend, with the shared NumPy pre- and post-process.

    det = Detector.load("model.onnx", backend="ort-cpu")     # or "demo", a checkpoint, an .engine
    results = det(["a.jpg", pil_image, numpy_array])          # list[Detections], original pixels
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retinanet_trt.errors import UsageError, require_torch
from retinanet_trt.runtime.backends.base import Backend
from retinanet_trt.runtime.images import ImageInput
from retinanet_trt.runtime.postprocess import postprocess
from retinanet_trt.runtime.preprocess import preprocess
from retinanet_trt.runtime.types import Batch, Detections
from retinanet_trt.spec import ModelSpec

BACKENDS = ("torch", "ort-cpu", "ort-cuda", "ort-trt", "trt")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt")


def default_backend(model: str) -> str:
    """torch for checkpoints and 'demo', trt for engines, ort-cpu for ONNX files."""
    if model == "demo" or model.endswith(CHECKPOINT_SUFFIXES):
        return "torch"
    return "trt" if model.endswith(".engine") else "ort-cpu"


def _load_torch(model: str, source: str = "auto") -> Backend:
    require_torch("the torch backend")
    from retinanet_trt.model import build_model
    from retinanet_trt.runtime.backends.torch_backend import TorchBackend

    if model == "demo":
        from retinanet_trt.demo import load_demo

        spec, net = load_demo()
        return TorchBackend(net, spec)
    if model.endswith(".onnx") or model.endswith(".engine"):
        raise UsageError(f"the torch backend needs a checkpoint or 'demo', not {model}; use --backend ort-cpu")
    from retinanet_trt.importers import import_checkpoint

    result = import_checkpoint(model, source=source)
    net = build_model(result.spec)
    net.load_state_dict(result.state_dict, strict=True)
    return TorchBackend(net, result.spec)


class Detector:
    """images -> list[Detections]; `last_times_ms` holds the time per stage of the last call."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.spec: ModelSpec = backend.spec
        self.last_times_ms: dict[str, Any] = {}

    @classmethod
    def load(cls, model: str | os.PathLike[str], backend: str | None = None, **options: Any) -> Detector:
        """model: an ONNX file, a TensorRT .engine, a framework checkpoint, or 'demo'."""
        model = os.fspath(model)
        backend = backend or default_backend(model)
        if backend == "onnxruntime":
            backend = "ort-cpu"
        if backend not in BACKENDS:
            raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if model != "demo" and not Path(model).exists():
            raise UsageError(f"model {model} not found; give an .onnx, an .engine, a checkpoint or 'demo'")
        if backend == "torch":
            return cls(_load_torch(model, options.get("source", "auto")))
        if backend == "trt":
            from retinanet_trt.runtime.backends.trt_backend import TrtBackend

            return cls(TrtBackend(model, **options))
        if not model.endswith(".onnx"):
            raise UsageError(f"backend {backend} needs an .onnx file, got {model}")
        from retinanet_trt.runtime.backends.ort_backend import OrtBackend

        return cls(OrtBackend(model, backend, **options))

    @property
    def fixed_input_hw(self) -> tuple[int, int] | None:
        return getattr(self.backend, "fixed_input_hw", None)

    def prepare(self, images: Sequence[ImageInput]) -> Batch:
        return preprocess(images, self.spec, input_hw=self.fixed_input_hw)

    def detect_batch(self, batch: Batch) -> list[Detections]:
        """Run the backend and the post-process on an already preprocessed batch."""
        outputs = self.backend.run(batch.images)
        t0 = time.perf_counter()
        level_ms: dict[str, float] = {}
        if "num_dets" in outputs:  # end-to-end model: decode + NMS ran inside the graph
            from retinanet_trt.plugins.end2end import detections_from_end2end

            detections = detections_from_end2end(outputs, self.spec, batch.metas)
        else:
            detections = postprocess(outputs, self.spec, batch.metas, level_times_ms=level_ms)
        times = self.backend.last_times
        self.last_times_ms.update(
            h2d=times.h2d_ms, compute=times.compute_ms, d2h=times.d2h_ms,
            postprocess=(time.perf_counter() - t0) * 1e3, postprocess_levels=level_ms,
        )
        return detections

    def __call__(self, images: Sequence[ImageInput]) -> list[Detections]:
        t0 = time.perf_counter()
        batch = self.prepare(images)
        self.last_times_ms = {"preprocess": (time.perf_counter() - t0) * 1e3}
        return self.detect_batch(batch)

    def close(self) -> None:
        self.backend.close()
