"""What the Triton python-backend models of a generated repository compute, as plain NumPy functions.

The Triton side (templates/triton_model.py, triton_python.py) only moves tensors between Triton
and these functions, so the arithmetic is this project's own (runtime.images, runtime.preprocess,
runtime.postprocess) and the detections equal trt-infer's. Nothing here imports Triton, so the
tests run it in-process too. It runs inside Triton's Python stub, under the numpy 1.x that stub is
built against: NumPy API only.

Tensors between the models (the batch dimension first, as Triton batches them):
    IMAGE_BYTES (B, 1) TYPE_STRING encoded images   or   IMAGE (B, H, W, 3) uint8 RGB
    images      (B, 3, H, W) float32: the network input, named as the network's input
    META        (B, 6) int32: original h, w; resized h, w; padded input h, w
    outputs     NUM_DETS (B, 1) int32; BOXES (B, D, 4) float32 x1 y1 x2 y2 in original pixels;
                SCORES (B, D) float32; LABELS (B, D) int64 label ids; NAMES (B, D) class names.
                D is the most detections of any image in the request; rows past NUM_DETS are padding
                (boxes and scores 0, label -1, name "").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.runtime.images import ImageLoadError, LoadedImage, decode_image_bytes, load_image
from retinanet_trt.runtime.postprocess import postprocess
from retinanet_trt.runtime.preprocess import preprocess
from retinanet_trt.runtime.resize_plan import padded_side, plan_resize, unfit_reason
from retinanet_trt.runtime.types import Detections, ImageMeta
from retinanet_trt.spec import ModelSpec

INPUT_BYTES = "IMAGE_BYTES"
INPUT_PIXELS = "IMAGE"
META = "META"
OUTPUTS = ("NUM_DETS", "BOXES", "SCORES", "LABELS", "NAMES")
# Defaults of the request limits (parameters of the preprocess model, trt-serve export options).
MAX_IMAGE_PIXELS = 40_000_000  # about 8K x 5K: larger is a mistake or an attack, not a photo to detect in
MAX_IMAGE_BYTES = 64 * 2**20


class RequestError(Exception):
    """A bad request: its message goes back to the client in the error response (one line)."""


@dataclass(frozen=True)
class Limits:
    """What one request may hold. min_input_hw / max_input_hw: the smallest and largest resized
    image the network accepts (a TensorRT engine's profiles); None where any size runs."""

    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_image_bytes: int = MAX_IMAGE_BYTES
    max_batch: int | None = None
    fixed_input_hw: tuple[int, int] | None = None
    min_input_hw: tuple[int, int] | None = None
    max_input_hw: tuple[int, int] | None = None


def decode_request(encoded: np.ndarray | None, pixels: np.ndarray | None, limits: Limits) -> list[LoadedImage]:
    """The images of one request: IMAGE_BYTES (B, 1) bytes objects or IMAGE (B, H, W, 3) uint8.

    Raises RequestError naming the input and the problem: both or neither input given, an empty
    batch, too many images, bytes that do not decode, an image over the pixel limit.
    """
    if (encoded is None) == (pixels is None):
        raise RequestError(f"give exactly one of {INPUT_BYTES} (encoded images) or {INPUT_PIXELS} "
                           f"(uint8 H x W x 3), not {'both' if encoded is not None else 'neither'}")
    given = encoded if encoded is not None else pixels
    name = INPUT_BYTES if encoded is not None else INPUT_PIXELS
    assert given is not None
    if given.ndim == 0 or given.shape[0] == 0:
        raise RequestError(f"empty batch: {name} has shape {list(given.shape)}, no image to detect in")
    if limits.max_batch is not None and given.shape[0] > limits.max_batch:
        raise RequestError(f"{name} holds {given.shape[0]} images, more than the model's max batch {limits.max_batch}")
    if encoded is not None:
        return [_decode_one(item, f"{INPUT_BYTES}[{i}]", limits) for i, item in enumerate(encoded.reshape(encoded.shape[0], -1))]
    assert pixels is not None
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[3] != 3:
        raise RequestError(f"{INPUT_PIXELS} must be uint8 (B, H, W, 3) RGB, got {pixels.dtype} {list(pixels.shape)}")
    h, w = int(pixels.shape[1]), int(pixels.shape[2])
    if h * w == 0:
        raise RequestError(f"{INPUT_PIXELS}: empty images of {h}x{w} pixels")
    if h * w > limits.max_image_pixels:
        raise RequestError(f"{INPUT_PIXELS}: {w}x{h} pixels, more than the limit of {limits.max_image_pixels} pixels; "
                           "send a smaller image")
    return [load_image(np.ascontiguousarray(pixels[i])) for i in range(pixels.shape[0])]


def _decode_one(item: np.ndarray, source: str, limits: Limits) -> LoadedImage:
    if item.size != 1:
        raise RequestError(f"{source}: expected one encoded image per row, got {item.size} elements")
    data = item[0]
    if isinstance(data, str):  # a client that sent text; Triton hands BYTES over as bytes
        data = data.encode("latin-1")
    if not isinstance(data, bytes):
        raise RequestError(f"{source}: expected encoded image bytes, got {type(data).__name__}")
    if len(data) > limits.max_image_bytes:
        raise RequestError(f"{source}: {len(data)} bytes, more than the limit of {limits.max_image_bytes} bytes")
    try:
        return decode_image_bytes(data, source, max_pixels=limits.max_image_pixels)
    except ImageLoadError as exc:
        raise RequestError(str(exc)) from None


def preprocess_request(images: Sequence[LoadedImage], spec: ModelSpec, limits: Limits) -> tuple[np.ndarray, np.ndarray]:
    """Images -> (network input (B, 3, H, W) float32, META (B, 6) int32), through runtime.preprocess
    exactly as trt-infer runs it. RequestError when an image cannot become a network input."""
    fixed, largest = limits.fixed_input_hw, limits.max_input_hw
    for image in images:
        reason = unfit_reason(image, spec.preprocess, fixed, largest)  # too thin, or too large under oversize 'refuse'
        if reason:
            raise RequestError(reason)
        # The framework's resize is kept where it fits the network's input (fixed, or the profile's
        # largest) and the rest are scaled down further (plan_resize), as trt-infer does.
        hw = plan_resize(image.hw, spec.preprocess, fixed, largest).hw
        padded = fixed or (padded_side(hw[0], spec.preprocess), padded_side(hw[1], spec.preprocess))
        if limits.min_input_hw is not None and (padded[0] < limits.min_input_hw[0] or padded[1] < limits.min_input_hw[1]):
            raise RequestError(f"{image.source}: {image.hw[0]}x{image.hw[1]} pixels make a network input of "
                               f"{padded[0]}x{padded[1]}, smaller than the network's smallest "
                               f"{limits.min_input_hw[0]}x{limits.min_input_hw[1]}")
    try:
        batch = preprocess(list(images), spec, input_hw=fixed, max_hw=largest)
    except UsageError as exc:
        raise RequestError(str(exc)) from None
    meta = np.array([[*m.original_hw, *m.resized_hw, *m.input_hw] for m in batch.metas], dtype=np.int32)
    return batch.images, meta


def metas_from_array(meta: np.ndarray) -> list[ImageMeta]:
    """META (B, 6) int32 -> one ImageMeta per image."""
    if meta.ndim != 2 or meta.shape[1] != 6:
        raise RequestError(f"{META} must be (B, 6) int32, got {list(meta.shape)}")
    rows = meta.astype(np.int64).tolist()
    return [ImageMeta(original_hw=(r[0], r[1]), resized_hw=(r[2], r[3]), input_hw=(r[4], r[5])) for r in rows]


def postprocess_request(outputs: dict[str, np.ndarray], meta: np.ndarray, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Raw head outputs of one request + META -> the ensemble's padded outputs (runtime.postprocess)."""
    return detections_to_outputs(postprocess(outputs, spec, metas_from_array(meta)))


def finish_end2end_request(outputs: dict[str, np.ndarray], meta: np.ndarray, spec: ModelSpec) -> dict[str, np.ndarray]:
    """End-to-end outputs (num_dets, boxes, scores, labels in network pixels) + META -> the padded
    outputs in original pixels: the rescale, clip and naming trt-infer does after in-graph NMS."""
    from retinanet_trt.plugins.end2end import detections_from_end2end

    return detections_to_outputs(detections_from_end2end(outputs, spec, metas_from_array(meta)))


def detections_to_outputs(dets: Sequence[Detections]) -> dict[str, np.ndarray]:
    """One Detections per image -> NUM_DETS (B, 1), BOXES (B, D, 4), SCORES, LABELS, NAMES (B, D)."""
    n, d = len(dets), max((len(x) for x in dets), default=0)
    num = np.zeros((n, 1), np.int32)
    boxes = np.zeros((n, d, 4), np.float32)
    scores = np.zeros((n, d), np.float32)
    labels = np.full((n, d), -1, np.int64)
    names = np.full((n, d), b"", dtype=object)
    for i, x in enumerate(dets):
        k = len(x)
        num[i, 0] = k
        boxes[i, :k] = x.boxes
        scores[i, :k] = x.scores
        labels[i, :k] = x.labels
        names[i, :k] = [s.encode() for s in x.names]
    return dict(zip(OUTPUTS, (num, boxes, scores, labels, names)))


def outputs_to_detections(outputs: dict[str, np.ndarray]) -> list[Detections]:
    """The ensemble's padded outputs (as a client receives them) -> one Detections per image."""
    num = np.asarray(outputs["NUM_DETS"]).reshape(-1)
    result = []
    for i, k in enumerate(num.tolist()):
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(outputs["NAMES"])[i, :k].tolist()]
        result.append(Detections(boxes=np.asarray(outputs["BOXES"], np.float32)[i, :k],
                                 scores=np.asarray(outputs["SCORES"], np.float32)[i, :k],
                                 labels=np.asarray(outputs["LABELS"], np.int64)[i, :k], names=names))
    return result


def split_by_shape(arrays: Sequence[np.ndarray]) -> list[list[int]]:
    """Indices of the requests whose inputs share a shape (except the batch), in arrival order: the
    groups the network model concatenates into one batch (Triton's dynamic batcher hands a python
    model every request separately, and images of different sizes cannot share one tensor)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(tuple(a.shape[1:]), []).append(i)
    return list(groups.values())
