"""Detector: one API over every backend, with the shared NumPy pre- and post-process.

    from retinanet_trt import Detector

    with Detector.load("model.onnx", backend="ort-cpu", score_threshold=0.3) as det:
        dets = det("a.jpg")                                   # one image -> one Detections
        results = det(["a.jpg", pil_image, hwc_array])        # a list -> list[Detections]

Models: an ONNX file (another tool's without this project's metadata, e.g. ModelOpt's or ORT's
quantizer output, with `spec=` or `onnx=` the FP32 file it was made from), a TensorRT engine (with
trt-build's sidecar, or `spec=` / `onnx=` for one built by trtexec or Polygraphy), a framework
checkpoint, or "demo".
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from PIL import Image

from retinanet_trt.errors import UsageError, require_torch
from retinanet_trt.runtime.backends.base import Backend
from retinanet_trt.runtime.images import ImageInput, LoadedImage
from retinanet_trt.runtime.postprocess import postprocess
from retinanet_trt.runtime.preprocess import preprocess
from retinanet_trt.runtime.types import Batch, Detections, ImageMeta
from retinanet_trt.runtime.uint8_input import FLOAT_NCHW, UINT8_NHWC, preprocess_uint8
from retinanet_trt.spec import ModelSpec

if TYPE_CHECKING:
    from retinanet_trt.runtime.pipeline import ImageResult, OnResult

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
    from retinanet_trt.model.torch_backend import TorchBackend

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
    """images -> Detections; `last_times_ms` holds the time per stage of the last call.

    score_threshold drops final detections scoring at or below it (the spec's own per-level
    thresholds still apply before NMS); a call can pass its own.
    """

    def __init__(self, backend: Backend, score_threshold: float | None = None) -> None:
        self.backend = backend
        self.spec: ModelSpec = backend.spec
        self.score_threshold = _check_threshold(score_threshold)
        self.last_times_ms: dict[str, Any] = {}
        self.last_metas: list[ImageMeta] = []  # the last call's images: sizes, and `shrunk` (plan_resize)

    @classmethod
    def load(cls, model: str | os.PathLike[str], backend: str | None = None, *,
             score_threshold: float | None = None, **options: Any) -> Detector:
        """model: an ONNX file, a TensorRT engine, a framework checkpoint, or 'demo'.

        options go to the backend: threads and arithmetic (ORT: "simulated" runs Q/DQ as written,
        the arithmetic trt-eval scores a file whose graph quantizes in), device / cuda_graph /
        plugin_libs (trt) and, for an engine without a sidecar or an ONNX without this project's
        metadata, spec (a ModelSpec) or onnx (the ONNX it was built or quantized from; the inputs
        and outputs must agree).
        """
        model = os.fspath(model)
        backend = backend or default_backend(model)
        if backend == "onnxruntime":
            backend = "ort-cpu"
        if backend not in BACKENDS:
            raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if model != "demo" and not Path(model).exists():
            raise UsageError(f"model {model} not found; give an .onnx, an .engine, a checkpoint or 'demo'")
        if backend == "torch":
            return cls(_load_torch(model, options.get("source", "auto")), score_threshold)
        if backend == "trt":
            if model.endswith(".onnx") or model == "demo" or model.endswith(CHECKPOINT_SUFFIXES):
                raise UsageError(f"backend trt runs a TensorRT engine, not {model}; build one with "
                                 f"`trt-build {model}`, or use --backend ort-cpu / ort-trt for an ONNX file")
            from retinanet_trt.runtime.backends.trt_backend import TrtBackend

            return cls(TrtBackend(model, **options), score_threshold)
        if not model.endswith(".onnx"):
            raise UsageError(f"backend {backend} needs an .onnx file, got {model}")
        from retinanet_trt.runtime.backends.ort_backend import OrtBackend

        return cls(OrtBackend(model, backend, **options), score_threshold)

    @property
    def fixed_input_hw(self) -> tuple[int, int] | None:
        """(H, W) of a static network input (every batch is padded to it), else None."""
        return getattr(self.backend, "fixed_input_hw", None)

    @property
    def max_input_hw(self) -> tuple[int, int] | None:
        """(H, W) of the largest input a dynamic network accepts (a TensorRT engine's profile), else None:
        an image that pads to more is scaled down further or refused, per spec.preprocess.oversize."""
        return getattr(self.backend, "max_input_hw", None)

    @property
    def input_format(self) -> str:
        """What the backend's network takes: "float32_nchw" (normalised on the host) or
        "uint8_nhwc" (resized 8-bit pixels plus a valid mask; the graph normalises, runtime/uint8_input.py)."""
        return getattr(self.backend, "input_format", FLOAT_NCHW)

    def prepare(self, images: Sequence[ImageInput]) -> Batch:
        """Images -> the backend's input batch (thread-safe: the pipeline's workers call it)."""
        if self.input_format == UINT8_NHWC:
            return preprocess_uint8(images, self.spec, input_hw=self.fixed_input_hw, max_hw=self.max_input_hw)
        return preprocess(images, self.spec, input_hw=self.fixed_input_hw, max_hw=self.max_input_hw)

    def decode(self, outputs: dict[str, np.ndarray], metas: Sequence[ImageMeta], score_threshold: float | None = None,
               level_times_ms: dict[str, float] | None = None) -> list[Detections]:
        """Raw backend outputs -> one Detections per meta (thread-safe: touches no state of the Detector)."""
        if "num_dets" in outputs:  # end-to-end model: decode + NMS ran inside the graph
            from retinanet_trt.plugins.end2end import detections_from_end2end

            detections = detections_from_end2end(outputs, self.spec, list(metas))
        else:
            detections = postprocess(outputs, self.spec, list(metas), level_times_ms=level_times_ms)
        threshold = self.score_threshold if score_threshold is None else _check_threshold(score_threshold)
        if threshold is not None:
            detections = [_above(d, threshold) for d in detections]
        return detections

    def detect_batch(self, batch: Batch, score_threshold: float | None = None) -> list[Detections]:
        """Run the backend and the post-process on an already preprocessed batch."""
        self.last_metas = list(batch.metas)
        outputs = self.backend.run(batch.images)
        t0 = time.perf_counter()
        level_ms: dict[str, float] = {}
        detections = self.decode(outputs, batch.metas, score_threshold, level_ms)
        times = self.backend.last_times
        self.last_times_ms.update(
            h2d=times.h2d_ms, compute=times.compute_ms, d2h=times.d2h_ms,
            postprocess=(time.perf_counter() - t0) * 1e3, postprocess_levels=level_ms,
        )
        return detections

    def stream(self, images: Iterable[ImageInput], *, batch_size: int = 1, workers: int | None = None,
               max_queue_mb: float | None = None, score_threshold: float | None = None,
               on_result: OnResult | None = None) -> Iterator[ImageResult]:
        """ImageResults (detections, meta, or the error of an image that could not run) in input
        order, for any iterable of images read lazily; decode + pre-process of the next batches and
        post-process of the previous ones run in `workers` host threads while the backend runs
        (None: one per core; 0: overlap off). At most max_queue_mb of batches are in flight.
        on_result(result, image) runs in a worker after each image's post-process (e.g. to draw it)."""
        from retinanet_trt.runtime.pipeline import run_pipeline

        return run_pipeline(self, images, batch_size=batch_size, workers=workers, max_queue_mb=max_queue_mb,
                            score_threshold=score_threshold, on_result=on_result)

    @overload
    def __call__(self, images: Sequence[ImageInput], score_threshold: float | None = None, *,
                 batch_size: int | None = None, workers: int | None = None) -> list[Detections]: ...

    @overload
    def __call__(self, images: ImageInput, score_threshold: float | None = None, *,
                 batch_size: int | None = None, workers: int | None = None) -> Detections: ...

    def __call__(self, images: Any, score_threshold: float | None = None, *, batch_size: int | None = None,
                 workers: int | None = None) -> Any:
        """One image (a path, a PIL image, an (H, W[, C]) array) -> Detections; a list (or an
        (N, H, W, C) array) -> list[Detections], in input order.

        A list is one batch; with batch_size it runs in batches of that size through the
        overlapped pipeline (`stream`, `workers` host threads) and raises the first image's error."""
        single = _is_single_image(images)
        if not single and batch_size is not None:
            results = list(self.stream(images, batch_size=batch_size, workers=workers, score_threshold=score_threshold))
            failed = next((r for r in results if r.error is not None), None)
            if failed is not None:
                raise failed.error  # type: ignore[misc]
            self.last_metas = [r.meta for r in results if r.meta is not None]
            return [r.detections for r in results]
        batch_in: Sequence[ImageInput] = [images] if single else list(images)
        t0 = time.perf_counter()
        batch = self.prepare(batch_in)
        self.last_times_ms = {"preprocess": (time.perf_counter() - t0) * 1e3}
        detections = self.detect_batch(batch, score_threshold)
        return detections[0] if single else detections

    def warmup(self, iterations: int = 2) -> None:
        """Run a blank image through the whole pipeline (first runs allocate and tune)."""
        hw = self.fixed_input_hw or (self.spec.preprocess.min_size, self.spec.preprocess.min_size)
        blank = np.zeros((*hw, 3), np.uint8)
        for _ in range(max(1, iterations)):
            self(blank)

    def close(self) -> None:
        """Free the backend's sessions, engines and buffers."""
        self.backend.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_single_image(images: Any) -> bool:
    """A batch is a list, tuple or other iterable of images, or an (N, H, W, C) array; anything
    else is one image (and the loader names it if it is not one)."""
    if isinstance(images, np.ndarray):
        return images.ndim != 4  # (H, W) or (H, W, C) is one image; (N, H, W, C) a batch
    if isinstance(images, (str, bytes, os.PathLike, Image.Image, LoadedImage)):
        return True
    return not isinstance(images, Iterable)


def _check_threshold(value: float | None) -> float | None:
    if value is not None and not 0.0 <= float(value) <= 1.0:
        raise UsageError(f"score_threshold {value}: scores are between 0 and 1")
    return None if value is None else float(value)


def _above(dets: Detections, threshold: float) -> Detections:
    keep = dets.scores > threshold
    return Detections(dets.boxes[keep], dets.scores[keep], dets.labels[keep],
                      [n for n, k in zip(dets.names, keep.tolist(), strict=True) if k])
