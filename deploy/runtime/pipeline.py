"""The overlapped host pipeline: decode + pre-process ahead, post-process behind, the backend never waiting.

    for r in detector.stream(paths, batch_size=1, workers=None):   # results in input order
        if r.error: print("skipped", r.source, r.error)
        else: use(r.detections, r.meta)

On a GPU the engine runs R50-FPN in a few milliseconds while the host spends several per image
decoding, resizing, normalising and post-processing; run one after the other, the engine idles.
Here three kinds of work overlap:

  prepare   (worker threads)  decode, the framework's resize, normalise, pad -> one Batch
  run       (one device thread) backend.run on the batches in input order (backends are not thread-safe)
  finish    (worker threads)  post-process -> Detections, then the caller's `on_result` (e.g. draw a PNG)

NumPy, Pillow, OpenCV, ONNX Runtime and the CUDA calls release the GIL in their heavy parts, so
threads really run in parallel. At most `depth` batches are in flight (prepared, running, finishing
or waiting to be consumed), bounded by `max_queue_mb` of their input tensors, outputs and decoded
pixels, so a fast producer cannot fill memory. Results come back in input order whatever the
order of completion; an image that cannot be read or fitted is an ImageResult with `error` set
(as trt-infer and trt-eval report it) and the rest still run.

Where a backend offers reusable host output buffers (`host_outputs(input_shape)`: page-locked
memory on TensorRT, preallocated arrays bound through ONNX Runtime's IO binding), each run writes
into a set taken from a pool and returned after its post-process, so no run allocates (or, on a
GPU, copies on the host) its outputs.

workers=0 runs the same steps one after the other in the caller's thread (overlap off), which is
what the overlap is checked against (tests/test_pipeline.py: identical detections, same order).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.runtime.images import ImageInput, ImageLoadError, LoadedImage, load_image
from retinanet_trt.runtime.types import Batch, Detections, ImageMeta

if TYPE_CHECKING:
    from retinanet_trt.runtime.detector import Detector

DEFAULT_QUEUE_MB = 1024.0  # in-flight batches (inputs, outputs, decoded pixels) stay under this
MAX_WORKERS = 32


def machine_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's CPU set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """One worker per core: the backend's thread mostly waits (on the GPU, or inside ONNX Runtime
    with the GIL released), so the host steps get every core."""
    return min(MAX_WORKERS, machine_cores())


def check_workers(workers: int | None) -> int:
    """workers None -> default_workers(); 0 means overlap off; UsageError outside 0..MAX_WORKERS."""
    if workers is None:
        return default_workers()
    if not 0 <= int(workers) <= MAX_WORKERS:
        raise UsageError(f"--workers {workers}: give 0 (overlap off) .. {MAX_WORKERS} host threads")
    return int(workers)


@dataclass
class ImageResult:
    """One input's outcome, in input order.

    index: position in the input; source: file name, "<array>" or "<PIL>"; detections and meta
    when it ran, else error (the ImageLoadError or UsageError that stopped it, message as trt-infer
    prints it); extra: what `on_result` returned for it; times_ms: its batch's milliseconds by step
    (load, preprocess, h2d, compute, d2h, postprocess; a batch's figures are shared by its images).
    """

    index: int
    source: str
    detections: Detections | None = None
    meta: ImageMeta | None = None
    error: Exception | None = None
    extra: Any = None
    times_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


OnResult = Callable[[ImageResult, LoadedImage], Any]


@dataclass
class _Prepared:
    """One batch after the prepare step: the images that made it into `batch` (in order) and the
    per-image errors of the others, keyed by input index."""

    indices: list[int]  # every input of the group, in order
    sources: dict[int, str]
    errors: dict[int, Exception]
    batch: Batch | None
    images: list[LoadedImage]  # the usable ones, in batch order
    ran: list[int]  # their input indices, in batch order
    times_ms: dict[str, float]
    nbytes: int = 0


class OutputPool:
    """Reusable host output sets of one backend, per input shape: taken before a run (by the device
    thread), given back after the post-process (by a worker). Backends without `host_outputs` get None."""

    def __init__(self, backend: Any) -> None:
        self._make = getattr(backend, "host_outputs", None)
        self._free: dict[tuple[int, ...], list[dict[str, np.ndarray]]] = {}
        self._lock = threading.Lock()
        self.allocated = 0

    def take(self, input_shape: tuple[int, ...]) -> dict[str, np.ndarray] | None:
        if self._make is None:
            return None
        with self._lock:
            free = self._free.get(input_shape)
            if free:
                return free.pop()
        made = self._make(input_shape)
        if made is not None:
            self.allocated += 1
        return made

    def give(self, input_shape: tuple[int, ...], outputs: dict[str, np.ndarray] | None) -> None:
        if outputs is None:
            return
        with self._lock:
            self._free.setdefault(input_shape, []).append(outputs)


def estimate_batch_bytes(detector: Detector, batch_size: int) -> int:
    """Bytes one batch holds in flight: its input tensor, its raw outputs and its decoded pixels,
    at the fixed input size, or for a dynamic input the spec's largest resize (within the network's
    largest input, when it has one)."""
    spec = detector.spec
    hw = detector.fixed_input_hw
    if hw is None:
        pre = spec.preprocess
        side = -(-max(pre.min_size, pre.max_size) // 32) * 32
        hw = (side, side) if pre.resize != "fixed" or not pre.fixed_size else tuple(pre.fixed_size)  # type: ignore[assignment]
        if detector.max_input_hw is not None:  # a profile larger than any resize must not shrink the depth
            hw = (min(hw[0], detector.max_input_hw[0]), min(hw[1], detector.max_input_hw[1]))
    h, w = int(hw[0]), int(hw[1])
    per_pixel_in = 4 if detector.input_format == "uint8_nhwc" else 12  # RGB + mask uint8, or 3 x float32
    channels = spec.head.num_anchors * (spec.head.num_classes + 4)
    outputs = sum(channels * -(-h // 2**lv) * -(-w // 2**lv) * 4 for lv in spec.levels)
    return batch_size * (h * w * per_pixel_in + outputs + h * w * 3)


def plan_depth(detector: Detector, workers: int, batch_size: int, max_queue_mb: float | None) -> int:
    """Batches in flight: enough to keep `workers` threads and the backend busy (workers + 2), no
    more than the memory bound allows (at least 1: a batch larger than the bound runs alone)."""
    bound = (DEFAULT_QUEUE_MB if max_queue_mb is None else float(max_queue_mb)) * 2**20
    if not 0 < bound < float("inf"):  # nan fails both
        raise UsageError(f"--queue-mb {max_queue_mb}: give a finite, positive number of megabytes")
    per_batch = max(1, estimate_batch_bytes(detector, batch_size))
    return max(1, min(workers + 2, int(bound // per_batch)))


def _describe(item: object) -> str:
    """The name an input is reported by before (or without) loading it, as trt-infer's skip lines use."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item) if isinstance(os.fspath(item), str) else repr(item)
    if isinstance(item, LoadedImage):
        return item.source
    from PIL import Image

    return "<PIL>" if isinstance(item, Image.Image) else "<array>"


def _groups(images: Iterable[ImageInput], batch_size: int) -> Iterator[list[tuple[int, ImageInput]]]:
    group: list[tuple[int, ImageInput]] = []
    for i, item in enumerate(images):
        group.append((i, item))
        if len(group) == batch_size:
            yield group
            group = []
    if group:
        yield group


def prepare_group(detector: Detector, group: list[tuple[int, ImageInput]]) -> _Prepared:
    """Decode and pre-process one group; an unreadable or unfit image becomes that image's error."""
    from retinanet_trt.runtime.resize_plan import unfit_reason

    t0 = time.perf_counter()
    sources: dict[int, str] = {}
    errors: dict[int, Exception] = {}
    images: list[LoadedImage] = []
    ran: list[int] = []
    fixed = detector.fixed_input_hw
    for index, item in group:
        try:
            image = load_image(item)
        except ImageLoadError as exc:
            sources[index], errors[index] = _describe(item), exc
            continue
        sources[index] = image.source
        reason = unfit_reason(image, detector.spec.preprocess, fixed, detector.max_input_hw)
        if reason:
            errors[index] = ImageLoadError(reason)
            continue
        images.append(image)
        ran.append(index)
    t1 = time.perf_counter()
    batch = None
    if images:
        try:
            batch = detector.prepare(images)
        except UsageError as exc:  # the whole batch could not be made (ImageLoadError included)
            errors.update({i: exc for i in ran})
            images, ran = [], []
    t2 = time.perf_counter()
    nbytes = 0 if batch is None else batch.images.nbytes + sum(im.pixels.nbytes for im in images)
    return _Prepared([i for i, _ in group], sources, errors, batch, images, ran,
                     {"load": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3}, nbytes)


def run_prepared(detector: Detector, prep: _Prepared, pool: OutputPool) -> tuple[dict[str, np.ndarray] | None,
                                                                                dict[str, np.ndarray] | None]:
    """The backend on one prepared batch (device thread): (outputs, the pooled set they live in)."""
    if prep.batch is None:
        return None, None
    shape = tuple(int(d) for d in prep.batch.images.shape)
    out_set = pool.take(shape)
    try:
        if out_set is not None:
            outputs = detector.backend.run(prep.batch.images, outputs=out_set)  # type: ignore[call-arg]
        else:
            outputs = detector.backend.run(prep.batch.images)
    except UsageError as exc:  # e.g. a shape outside the engine's profiles: every image of the batch
        pool.give(shape, out_set)
        prep.errors.update({i: exc for i in prep.ran})
        prep.batch, prep.images, prep.ran = None, [], []
        return None, None
    times = detector.backend.last_times
    prep.times_ms.update(h2d=times.h2d_ms, compute=times.compute_ms, d2h=times.d2h_ms)
    return outputs, out_set


def finish_prepared(detector: Detector, prep: _Prepared, outputs: dict[str, np.ndarray] | None,
                    out_set: dict[str, np.ndarray] | None, pool: OutputPool, score_threshold: float | None,
                    on_result: OnResult | None) -> list[ImageResult]:
    """Post-process one batch (worker thread) and build its results in input order."""
    t0 = time.perf_counter()
    detections: list[Detections] = []
    if prep.batch is not None and outputs is not None:
        try:
            detections = detector.decode(outputs, prep.batch.metas, score_threshold)
        finally:
            pool.give(tuple(int(d) for d in prep.batch.images.shape), out_set)
    prep.times_ms["postprocess"] = (time.perf_counter() - t0) * 1e3
    by_index = {i: (d, m, im) for i, d, m, im in zip(prep.ran, detections, prep.batch.metas if prep.batch else [],
                                                     prep.images, strict=True)}
    results = []
    for index in prep.indices:
        result = ImageResult(index, prep.sources[index], error=prep.errors.get(index), times_ms=prep.times_ms)
        if index in by_index:
            result.detections, result.meta, image = by_index[index]
            if on_result is not None:
                result.extra = on_result(result, image)
        results.append(result)
    return results


def run_pipeline(detector: Detector, images: Iterable[ImageInput], *, batch_size: int = 1, workers: int | None = None,
                 max_queue_mb: float | None = None, score_threshold: float | None = None,
                 on_result: OnResult | None = None) -> Iterator[ImageResult]:
    """ImageResults of `images` (any iterable, read lazily) in input order; see the module docstring.

    workers: host threads (None: one per core; 0: overlap off, everything in the caller's thread).
    on_result(result, image) runs in a worker for each image that ran (after its post-process);
    what it returns is result.extra. It must be thread-safe when workers > 0.
    """
    if batch_size < 1:
        raise UsageError(f"--batch {batch_size}: give at least 1 image per inference")
    n_workers = check_workers(workers)
    pool = OutputPool(detector.backend)
    if n_workers == 0:
        return _inline(detector, images, batch_size, pool, score_threshold, on_result)
    depth = plan_depth(detector, n_workers, batch_size, max_queue_mb)
    return _overlapped(detector, images, batch_size, n_workers, depth, pool, score_threshold, on_result)


def _inline(detector: Detector, images: Iterable[ImageInput], batch_size: int, pool: OutputPool,
            score_threshold: float | None, on_result: OnResult | None) -> Iterator[ImageResult]:
    for group in _groups(images, batch_size):
        prep = prepare_group(detector, group)
        outputs, out_set = run_prepared(detector, prep, pool)
        yield from finish_prepared(detector, prep, outputs, out_set, pool, score_threshold, on_result)


_DONE = object()


def _overlapped(detector: Detector, images: Iterable[ImageInput], batch_size: int, workers: int, depth: int,
                pool: OutputPool, score_threshold: float | None, on_result: OnResult | None) -> Iterator[ImageResult]:
    executor = ThreadPoolExecutor(workers, thread_name_prefix="retinanet-host")
    slots = threading.Semaphore(depth)  # batches in flight; given back once their results are consumed
    finished: queue.Queue[Any] = queue.Queue()  # finish futures in input order, then _DONE or an exception
    stop = threading.Event()

    def take_slot(block: bool) -> bool:
        while not stop.is_set():
            if slots.acquire(timeout=0.05 if block else 0):
                return True
            if not block:
                return False
        return False

    def device_loop() -> None:
        bind = getattr(detector.backend, "bind_thread", None)  # e.g. make the engine's CUDA device current
        try:
            if bind is not None:
                bind()
            groups = _groups(images, batch_size)
            pending: deque[Future[_Prepared]] = deque()
            exhausted = False
            while not stop.is_set():
                # Top up the prepare queue without waiting; wait for a slot only when nothing is queued.
                while not exhausted and take_slot(block=not pending):
                    group = next(groups, None)
                    if group is None:
                        exhausted = True
                        slots.release()
                        break
                    pending.append(executor.submit(prepare_group, detector, group))
                if not pending:
                    break
                prep = pending.popleft().result()
                outputs, out_set = run_prepared(detector, prep, pool)
                finished.put(executor.submit(finish_prepared, detector, prep, outputs, out_set, pool,
                                             score_threshold, on_result))
            for fut in pending:  # stopped early: nothing more runs
                fut.cancel()
            finished.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            finished.put(exc)

    device = threading.Thread(target=device_loop, name="retinanet-device", daemon=True)
    device.start()
    try:
        while True:
            item = finished.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            results = item.result()
            try:
                yield from results
            finally:  # the batch counts as in flight until the caller is done with its results
                slots.release()
    finally:
        stop.set()
        device.join()
        executor.shutdown(wait=True, cancel_futures=True)
