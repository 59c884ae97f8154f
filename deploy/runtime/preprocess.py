"""Pre-process driven by spec.preprocess: images -> resized, normalised, zero-padded (N, 3, H, W) batch.

Each image is decoded to 8-bit RGB, then resized and normalised in the order and arithmetic of its
framework (spec.preprocess.resize_impl, kernels in runtime/resize.py): Pillow on the uint8 image
before normalising (detectron2, maskrcnn-benchmark), or normalise first and resize the float image
with PyTorch's bilinear kernel (torchvision), scikit-image (yhenon) or OpenCV (Detectron); or OpenCV
on the uint8 image before normalising (MindSpore).
Normalising reorders channels, divides by 1/`scale` (the frameworks' `/ 255`), subtracts mean and
divides by std. Padding is zeros bottom/right *after* normalisation, as in every framework's
batching. Output sizes follow each framework's own rounding (facts/checkpoint-formats.md 1g, 2f,
3f, 4f, 5f), so the network input matches the framework's own to float rounding or better.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.runtime import resize
from retinanet_trt.runtime.images import (
    ImageInput,
    LoadedImage,
    LoadFailure,
    load_image,
    load_images,
)
from retinanet_trt.runtime.resize_plan import plan_batch, resize_scale, unfit_reason
from retinanet_trt.runtime.types import Batch, ImageMeta
from retinanet_trt.spec import RESIZE_IMPLS, ModelSpec, PreprocessSpec


def _normalized(pixels: np.ndarray, pre: PreprocessSpec, dtype: type[np.floating] = np.float32) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) in the spec's channel order, scaled and normalised.

    Scaling divides by 1/scale in float32 (255 -> 255.0 exactly) because torchvision's
    convert_image_dtype and yhenon's loader divide by 255 and a product with 1/255 rounds
    differently; mean/std then apply in `dtype` (float64 for yhenon's NumPy Normalizer).
    """
    if pre.channel_order == "BGR":
        pixels = pixels[:, :, ::-1]
    elif pre.channel_order != "RGB":
        raise UsageError(f"preprocess.channel_order={pre.channel_order!r} (use 'RGB' or 'BGR')")
    x = pixels.astype(np.float32)  # a fresh array: the steps below work in place
    x /= np.float32(1.0 / pre.scale)
    x = x.astype(dtype, copy=False)
    # mean/std are given in the network's channel order and in the scaled units.
    x -= np.asarray(pre.mean, dtype=dtype)
    x /= np.asarray(pre.std, dtype=dtype)
    return x


def normalize(pixels: np.ndarray, pre: PreprocessSpec) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in the spec's channel order, scaled and normalised."""
    return np.ascontiguousarray(_normalized(pixels, pre).transpose(2, 0, 1))


def resized_8bit(pixels: np.ndarray, hw: tuple[int, int], pre: PreprocessSpec) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 by the frameworks that resize before normalising
    (pillow_uint8: Pillow; cv2_uint8: cv2.resize to hw)."""
    if pre.resize_impl == "pillow_uint8":
        return resize.pillow_uint8(pixels, hw, pre.interpolation)
    if pre.resize_impl == "cv2_uint8":
        return resize.cv2_uint8(pixels, hw)
    raise UsageError(f"resize_impl {pre.resize_impl} resizes the normalised float image, not the 8-bit one")


def network_image(pixels: np.ndarray, hw: tuple[int, int], pre: PreprocessSpec,
                  scale: float | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, h, w) float32: resized to `hw` and normalised as pre.resize_impl says.

    scale: the factor cv2_float hands to cv2.resize as fx = fy (the framework's own when None).
    The one place an image becomes network input: preprocess(), and so the detector, eval,
    calibration sets and benchmarks, go through here.
    """
    impl = pre.resize_impl
    if impl in ("pillow_uint8", "cv2_uint8"):  # resize the 8-bit image, then normalise
        x = _normalized(resized_8bit(pixels, hw, pre), pre)
    elif impl == "torch_bilinear_float":  # normalise, then F.interpolate
        x = resize.torch_bilinear(_normalized(pixels, pre), hw)
    elif impl == "skimage_float":  # float64 Normalizer, then skimage resize
        x = resize.skimage_float(_normalized(pixels, pre, np.float64), hw)
    elif impl == "cv2_float":  # subtract the means, then cv2.resize(fx=fy=scale)
        if scale is None and pre.resize == "shortest_edge":
            scale = resize_scale(pixels.shape[:2], pre)
        x = resize.cv2_float(_normalized(pixels, pre), hw, scale)
    else:
        raise UsageError(f"preprocess.resize_impl={impl!r} (use {', '.join(RESIZE_IMPLS)})")
    return x.transpose(2, 0, 1)


def preprocess(
    images: Sequence[ImageInput], spec: ModelSpec, input_hw: tuple[int, int] | None = None,
    max_hw: tuple[int, int] | None = None,
) -> Batch:
    """Images -> Batch(images (N, 3, H, W) float32, one ImageMeta each).

    H, W is the largest resized size padded per spec (so images of different sizes share one
    batch), or `input_hw` when given (a static network input): each image is resized as its
    framework resizes it and zero-padded to it; one whose resized size does not fit `input_hw`, or
    pads to more than `max_hw` (a dynamic network's largest input), is scaled down further or
    refused, per spec.preprocess.oversize (resize_plan.plan_resize; its meta says `shrunk`).
    Raises ImageLoadError naming the first input that cannot be read or fitted (see iter_batches to go on).
    """
    if len(images) == 0:
        raise UsageError("preprocess needs at least one image")
    pre = spec.preprocess
    loaded = [load_image(im) for im in images]
    plans, target = plan_batch(loaded, pre, input_hw, max_hw)
    batch = np.zeros((len(loaded), 3, *target), dtype=np.float32)
    metas: list[ImageMeta] = []
    for i, (im, plan) in enumerate(zip(loaded, plans, strict=True)):
        h, w = plan.hw
        batch[i, :, :h, :w] = network_image(im.pixels, plan.hw, pre, plan.scale if plan.shrunk else None)
        metas.append(ImageMeta(original_hw=im.hw, resized_hw=plan.hw, input_hw=target, source=im.source,
                               shrunk=plan.shrunk))
    return Batch(images=batch, metas=metas)


def iter_batches(
    images: Iterable[ImageInput],
    spec: ModelSpec,
    batch_size: int = 1,
    input_hw: tuple[int, int] | None = None,
    failures: list[LoadFailure] | None = None,
    max_hw: tuple[int, int] | None = None,
) -> Iterator[Batch]:
    """Preprocessed batches of up to batch_size images, loading lazily.

    With a `failures` list, an unreadable or unfit image is recorded there and the run goes on with
    the rest; without one, it raises ImageLoadError. Only usable images appear in the batches.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    pending: list[LoadedImage] = []
    for item in images:
        if failures is None:
            pending.append(load_image(item))
        else:
            loaded, failed = load_images([item])
            failures.extend(failed)
            for image in loaded:
                reason = unfit_reason(image, spec.preprocess, input_hw, max_hw)
                if reason:
                    failures.append(LoadFailure(image.source, reason))
                else:
                    pending.append(image)
        if len(pending) == batch_size:
            yield preprocess(pending, spec, input_hw, max_hw)
            pending = []
    if pending:
        yield preprocess(pending, spec, input_hw, max_hw)


