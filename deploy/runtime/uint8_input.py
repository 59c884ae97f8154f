"""uint8 network input: the host hands over resized 8-bit pixels, the graph normalises.

A model exported with `trt-export --input-format uint8` (export/uint8_input.py) takes

    images  (N, H, W, 4) uint8: channels 0..2 the resized image in RGB, as decoded; channel 3 is 1
            on the resized image and 0 on the padding

and computes, first thing in the graph, exactly what runtime.preprocess computes on the host:
reorder to the spec's channel order, divide by 1/scale, subtract mean, divide by std (float32,
the same operations in the same order), zero the padding (times channel 3) and go NCHW. The
fourth channel is what keeps the padding exact: frameworks pad with zeros *after* normalising,
which no uint8 value normalises to. 4 bytes a pixel instead of 12 (3 float32), and no float pass
on the host.

Only frameworks that resize the 8-bit image before normalising can hand it over this way
(resize_impl pillow_uint8, cv2_uint8); the others normalise first and resize the float image, so
the resized uint8 image they would send does not exist (uint8_refusal says so in one line).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.runtime import resize
from retinanet_trt.runtime.images import ImageInput, load_image
from retinanet_trt.runtime.types import Batch, ImageMeta
from retinanet_trt.spec import PreprocessSpec

FLOAT_NCHW = "float32_nchw"  # (N, 3, H, W) float32, normalised on the host (runtime.preprocess)
UINT8_NHWC = "uint8_nhwc"  # (N, H, W, 4) uint8, RGB + valid mask, normalised in the graph
INPUT_FORMATS = ("float", "uint8")  # trt-export --input-format
UINT8_IMPLS = ("pillow_uint8", "cv2_uint8")
CHANNELS = 4


def uint8_refusal(pre: PreprocessSpec) -> str | None:
    """Why a spec cannot take uint8 input (one line), or None when it can."""
    if pre.resize_impl in UINT8_IMPLS:
        return None
    return (f"--input-format uint8 does not apply to resize_impl {pre.resize_impl}: that framework normalises "
            "before it resizes (the resize works on floats), so there is no resized uint8 image to hand over; "
            "export with the float input")


def resized_rgba(pixels: np.ndarray, hw: tuple[int, int], pre: PreprocessSpec) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (h, w, 4) uint8: resized by the framework's own uint8 kernel, channel 3
    set to 1 (the valid mask). Pillow adds the mask in C (putalpha): about half the time of a
    strided NumPy write of the three colour channels into a four-channel array."""
    from PIL import Image

    if pre.resize_impl == "pillow_uint8":
        image = resize.pillow_uint8_image(pixels, hw, pre.interpolation)
    elif pre.resize_impl == "cv2_uint8":
        image = Image.fromarray(resize.cv2_uint8(pixels, hw) if pixels.shape[:2] != tuple(hw) else pixels)
    else:
        raise UsageError(uint8_refusal(pre) or f"resize_impl {pre.resize_impl}")
    image.putalpha(1)  # on the resized copy, or on Image.fromarray's own copy: never the caller's pixels
    return np.asarray(image)


def preprocess_uint8(images: Sequence[ImageInput], spec: object, input_hw: tuple[int, int] | None = None,
                     out: np.ndarray | None = None, max_hw: tuple[int, int] | None = None) -> Batch:
    """Images -> Batch(images (N, H, W, 4) uint8, one ImageMeta each), sized exactly as
    runtime.preprocess sizes the float batch (same resize plans, same padding, same metas).

    out: a zeroed-or-reusable (N, H, W, 4) uint8 array to fill (e.g. page-locked memory); its
    padding is rewritten, so any previous content is fine.
    """
    from retinanet_trt.runtime.resize_plan import plan_batch

    if len(images) == 0:
        raise UsageError("preprocess needs at least one image")
    pre = spec.preprocess  # type: ignore[attr-defined]
    if uint8_refusal(pre):
        raise UsageError(uint8_refusal(pre))
    loaded = [load_image(im) for im in images]
    plans, target = plan_batch(loaded, pre, input_hw, max_hw)
    shape = (len(loaded), *target, CHANNELS)
    if out is None:
        batch = np.zeros(shape, np.uint8)
    else:
        if out.shape != shape or out.dtype != np.uint8:
            raise ValueError(f"out has shape {out.shape} {out.dtype}, the batch needs {shape} uint8")
        batch = out
    metas: list[ImageMeta] = []
    for i, (im, plan) in enumerate(zip(loaded, plans, strict=True)):
        h, w = plan.hw
        batch[i, :h, :w] = resized_rgba(im.pixels, plan.hw, pre)
        if out is not None:  # a reused buffer: clear what the last batch left in the padding
            batch[i, h:, :, :] = 0
            batch[i, :h, w:, :] = 0
        metas.append(ImageMeta(original_hw=im.hw, resized_hw=plan.hw, input_hw=target, source=im.source,
                               shrunk=plan.shrunk))
    return Batch(images=batch, metas=metas)


def normalize_uint8_reference(batch: np.ndarray, pre: PreprocessSpec) -> np.ndarray:
    """What the graph computes from a uint8 batch, in NumPy: (N, H, W, 4) uint8 -> (N, 3, H, W)
    float32, with runtime.preprocess's arithmetic (for tests and the export's exactness check)."""
    from retinanet_trt.runtime.preprocess import _normalized

    out = np.zeros((batch.shape[0], 3, batch.shape[1], batch.shape[2]), np.float32)
    for i in range(batch.shape[0]):
        x = _normalized(np.ascontiguousarray(batch[i, :, :, :3]), pre)
        out[i] = (x * batch[i, :, :, 3:4].astype(np.float32)).transpose(2, 0, 1)
    return out
