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

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.runtime import resize
from retinanet_trt.runtime.images import (
    ImageInput,
    ImageLoadError,
    LoadedImage,
    LoadFailure,
    load_image,
    load_images,
)
from retinanet_trt.runtime.types import Batch, ImageMeta
from retinanet_trt.spec import RESIZE_IMPLS, ModelSpec, PreprocessSpec


def resize_scale(original_hw: tuple[int, int], pre: PreprocessSpec) -> float:
    """The one factor the spec's resize applies to both sides, computed as the framework computes it.

    A post-process with rescale "uniform" divides boxes by it (Detectron's im_scale, yhenon's scale):
      floor       torchvision: min(min_size / short, max_size / long) in float32
      round       yhenon: min_size / short; max_size / long when long * scale > max_size
      detectron   Detectron: min_size / short; max_size / long when round(scale * long) > max_size
    resize "none" gives 1.0. "round_half_up" and "maskrcnn_benchmark" set each side on its own and a
    "fixed" resize stretches, so they have no single factor: UsageError.
    """
    if pre.resize == "none":
        return 1.0
    if pre.resize != "shortest_edge" or pre.rounding not in ("floor", "round", "detectron"):
        raise UsageError(
            f"preprocess resize={pre.resize!r} rounding={pre.rounding!r} has no single resize factor; "
            "use postprocess.rescale='per_axis'"
        )
    h, w = original_hw
    short, long = min(h, w), max(h, w)
    if pre.rounding == "floor":
        # torchvision computes `800.0 / tensor` in float32, which torch evaluates as
        # reciprocal(tensor) * 800; that float32 value decides floor() at boundaries
        # (480 * scale gives 800, where the exact 800/480 in double would give 799.99...).
        inv_short, inv_long = np.float32(1.0) / np.float32(short), np.float32(1.0) / np.float32(long)
        return float(min(inv_short * np.float32(pre.min_size), inv_long * np.float32(pre.max_size)))
    scale = pre.min_size / short
    if pre.rounding == "round":  # yhenon Resizer: `if largest_side * scale > max_side`
        if long * scale > pre.max_size:
            scale = pre.max_size / long
    elif round(scale * long) > pre.max_size:  # Detectron get_target_scale: np.round (half to even)
        scale = pre.max_size / long
    return scale


def resized_hw(original_hw: tuple[int, int], pre: PreprocessSpec) -> tuple[int, int]:
    """(H, W) after the spec's resize, rounded as the source framework rounds.

    shortest_edge scales the short side to min_size unless the long side would pass max_size, in
    which case the long side becomes max_size. Rounding:
      floor               torchvision: scale computed in float32, each side floor(side * scale)
      round_half_up       detectron2: short side = min_size exactly, each side int(x + 0.5)
      round               yhenon: each side Python round(side * scale) (half to even)
      detectron           Detectron: round(side * im_scale) as cv2.resize(fx=fy=im_scale) (half to
                          even), im_scale capped when round(im_scale * long) > max_size
      maskrcnn_benchmark  T.Resize: short side = min_size, or int(round(max_size * short / long)) when
                          long / short * min_size > max_size; long side int(size * long / short) (truncated)
    """
    h, w = original_hw
    if pre.resize == "none":
        return h, w
    if pre.resize == "fixed":
        if not pre.fixed_size:
            raise UsageError("preprocess.resize='fixed' needs preprocess.fixed_size [H, W]")
        fh, fw = pre.fixed_size
        return int(fh), int(fw)
    if pre.resize != "shortest_edge":
        raise UsageError(f"preprocess.resize={pre.resize!r} (use 'shortest_edge', 'fixed' or 'none')")
    short, long = min(h, w), max(h, w)
    if pre.rounding == "floor":
        scale = resize_scale(original_hw, pre)
        return math.floor(h * scale), math.floor(w * scale)
    if pre.rounding == "round_half_up":
        # detectron2 sets the short side to min_size exactly and scales the long one, then caps.
        scale = pre.min_size / short
        new_short, new_long = float(pre.min_size), long * scale
        if new_long > pre.max_size:
            cap = pre.max_size / new_long
            new_short, new_long = new_short * cap, new_long * cap
        new_h, new_w = (new_short, new_long) if h < w else (new_long, new_short)
        return int(new_h + 0.5), int(new_w + 0.5)
    if pre.rounding in ("round", "detectron"):
        # Python round and cv2's saturate_cast<int>(double) both round half to even.
        scale = resize_scale(original_hw, pre)
        return round(h * scale), round(w * scale)
    if pre.rounding == "maskrcnn_benchmark":
        size = pre.min_size
        if float(long) / float(short) * size > pre.max_size:
            size = int(round(pre.max_size * float(short) / float(long)))
        other = int(size * long / short)
        return (size, other) if h <= w else (other, size)
    raise UsageError(
        f"preprocess.rounding={pre.rounding!r} (floor, round_half_up, round, detectron or maskrcnn_benchmark)"
    )


def padded_side(side: int, pre: PreprocessSpec) -> int:
    """Side length after zero padding to size_divisibility (yhenon adds a full step when divisible)."""
    d = pre.size_divisibility
    if d <= 1:
        return side
    if pre.pad_extra_when_divisible:
        return side + d - side % d
    return -(-side // d) * d


def network_input_hw(original_hw: tuple[int, int], spec: ModelSpec) -> tuple[int, int]:
    """(H, W) of the padded network input for one image of this size (e.g. a static export's shape)."""
    rh, rw = resized_hw(original_hw, spec.preprocess)
    return padded_side(rh, spec.preprocess), padded_side(rw, spec.preprocess)


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


def network_image(pixels: np.ndarray, hw: tuple[int, int], pre: PreprocessSpec) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, h, w) float32: resized to `hw` and normalised as pre.resize_impl says.

    The one place an image becomes network input: preprocess(), and so the detector, eval,
    calibration sets and benchmarks, go through here.
    """
    impl = pre.resize_impl
    if impl == "pillow_uint8":  # resize the 8-bit image, then normalise
        x = _normalized(resize.pillow_uint8(pixels, hw, pre.interpolation), pre)
    elif impl == "torch_bilinear_float":  # normalise, then F.interpolate
        x = resize.torch_bilinear(_normalized(pixels, pre), hw)
    elif impl == "skimage_float":  # float64 Normalizer, then skimage resize
        x = resize.skimage_float(_normalized(pixels, pre, np.float64), hw)
    elif impl == "cv2_float":  # subtract the means, then cv2.resize(fx=fy=scale)
        scale = resize_scale(pixels.shape[:2], pre) if pre.resize == "shortest_edge" else None
        x = resize.cv2_float(_normalized(pixels, pre), hw, scale)
    elif impl == "cv2_uint8":  # cv2.resize the 8-bit image to hw, then normalise
        x = _normalized(resize.cv2_uint8(pixels, hw), pre)
    else:
        raise UsageError(f"preprocess.resize_impl={impl!r} (use {', '.join(RESIZE_IMPLS)})")
    return x.transpose(2, 0, 1)


def preprocess(
    images: Sequence[ImageInput], spec: ModelSpec, input_hw: tuple[int, int] | None = None
) -> Batch:
    """Images -> Batch(images (N, 3, H, W) float32, one ImageMeta each).

    H, W is the largest resized size padded per spec (so images of different sizes share one
    batch), or `input_hw` when given (a static network input): each image is resized per spec and
    zero-padded to it; an image whose resized size does not fit raises UsageError.
    Raises ImageLoadError naming the first input that cannot be read (see iter_batches to go on).
    """
    if len(images) == 0:
        raise UsageError("preprocess needs at least one image")
    pre = spec.preprocess
    loaded = [load_image(im) for im in images]
    sizes = [resized_hw(im.hw, pre) for im in loaded]
    for im, hw in zip(loaded, sizes, strict=True):
        if min(hw) < 1:
            raise ImageLoadError(_unfit_message(im, hw))
    if input_hw is None:
        target = (padded_side(max(h for h, _ in sizes), pre), padded_side(max(w for _, w in sizes), pre))
    else:
        target = (int(input_hw[0]), int(input_hw[1]))
        for im, (h, w) in zip(loaded, sizes, strict=True):
            if h > target[0] or w > target[1]:
                raise UsageError(
                    f"{im.source}: resized to {h}x{w} by the spec, which does not fit the fixed network input "
                    f"{target[0]}x{target[1]}; export with a larger or dynamic input size"
                )
    batch = np.zeros((len(loaded), 3, *target), dtype=np.float32)
    metas: list[ImageMeta] = []
    for i, (im, (h, w)) in enumerate(zip(loaded, sizes, strict=True)):
        batch[i, :, :h, :w] = network_image(im.pixels, (h, w), pre)
        metas.append(ImageMeta(original_hw=im.hw, resized_hw=(h, w), input_hw=target, source=im.source))
    return Batch(images=batch, metas=metas)


def _unfit_message(image: LoadedImage, resized: tuple[int, int]) -> str:
    h, w = image.hw
    return (f"{image.source}: {h}x{w} pixels, which the spec's resize makes {resized[0]}x{resized[1]}; "
            "too thin to detect in (crop or pad it)")


def unfit_reason(image: LoadedImage, pre: PreprocessSpec) -> str | None:
    """Why the spec's resize cannot make a network input of this image (e.g. 20000x1), or None."""
    resized = resized_hw(image.hw, pre)
    return _unfit_message(image, resized) if min(resized) < 1 else None


def iter_batches(
    images: Iterable[ImageInput],
    spec: ModelSpec,
    batch_size: int = 1,
    input_hw: tuple[int, int] | None = None,
    failures: list[LoadFailure] | None = None,
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
                reason = unfit_reason(image, spec.preprocess)
                if reason:
                    failures.append(LoadFailure(image.source, reason))
                else:
                    pending.append(image)
        if len(pending) == batch_size:
            yield preprocess(pending, spec, input_hw)
            pending = []
    if pending:
        yield preprocess(pending, spec, input_hw)
