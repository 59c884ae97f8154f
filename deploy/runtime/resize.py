"""The resize kernels of the pre-process, one per spec.preprocess.resize_impl, each reproducing the
arithmetic of the library its framework resizes with (facts/checkpoint-formats.md 1g, 2f, 3f, 4f, 5f).

All take and return channels-last images: (H, W, C) -> (h, w, C).

    pillow_uint8          uint8 -> uint8: Pillow (detectron2, maskrcnn-benchmark)
    torch_bilinear        float32: PyTorch's CPU upsample_bilinear2d, reimplemented in NumPy (torchvision)
    skimage_float         float64 -> float32: skimage.transform.resize (yhenon)
    cv2_float             float32: cv2.resize INTER_LINEAR (Detectron)
    cv2_uint8             uint8 -> uint8: cv2.resize INTER_LINEAR to a given size (MindSpore)

No torch here (the runtime deploys without it); scikit-image and OpenCV are imported on first use so
a runtime that never meets those specs does not pay for their import.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from retinanet_trt.errors import UsageError

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
}


def pillow_uint8(pixels: np.ndarray, hw: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 with Pillow (antialiased when shrinking, as PIL always is)."""
    if pixels.shape[:2] == tuple(hw):
        return pixels
    return np.asarray(pillow_uint8_image(pixels, hw, interpolation))


def pillow_uint8_image(pixels: np.ndarray, hw: tuple[int, int], interpolation: str = "bilinear") -> Image.Image:
    """pillow_uint8 as a PIL image (h x w RGB), for callers that go on working in Pillow."""
    try:
        resample = _RESAMPLE[interpolation]
    except KeyError:
        raise UsageError(f"preprocess.interpolation={interpolation!r} (use {', '.join(_RESAMPLE)})") from None
    image = Image.fromarray(pixels)
    h, w = hw
    return image if pixels.shape[:2] == (h, w) else image.resize((w, h), resample)


# ---------------------------------------------------------------- PyTorch bilinear, align_corners=False


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray | np.floating) -> np.ndarray:
    """float32 a * b + c rounded once, as a fused multiply-add: the float32 product is exact in
    float64, so only the sum is rounded (twice; double rounding is off by an ulp only at exact ties)."""
    out = np.multiply(a, b, dtype=np.float64)
    out += c
    return out.astype(np.float32)


def _torch_linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source rows/columns and weights of one axis: (i0, i1) int64 and (w0, w1) float32, each (out_size,).

    As PyTorch's HelperInterpLinear::compute_indices_weights: scale = float(in) / out (interpolate
    with recompute_scale_factor=True passes no scale, so the kernel recomputes it from the sizes),
    src = scale * (i + 0.5) - 0.5 clamped at 0 (area_pixel_compute_source_index; the compiler
    fuses it into one FMA), i0 = min(floor(src), in - 1), w1 = clamp(src - i0, 0, 1), w0 = 1 - w1,
    i1 = i0 + 1 except at the last row. Equal sizes copy.
    """
    i = np.arange(out_size)
    if in_size == out_size:
        return i, i, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    src = _fma32(np.full(out_size, scale), i.astype(np.float32) + np.float32(0.5), np.float64(-0.5))
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0))
    return i0, i0 + (i0 < in_size - 1), np.float32(1.0) - w1, w1


def _lerp(a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """a * wa + b * wb as PyTorch's `t0 * w0 + t1 * w1` compiles: fma(a, wa, round(b * wb))."""
    b *= wb  # b is a fresh gather: scale it in place
    return _fma32(a, wa, b)


def torch_bilinear(x: np.ndarray, hw: tuple[int, int], rows_per_block: int = 48) -> np.ndarray:
    """(H, W, C) float32 -> (h, w, C) float32, bit-exact with torch.nn.functional.interpolate(
    mode="bilinear", align_corners=False, antialias=False) on the CPU for a 3-channel image.

    PyTorch's generic kernel (upsample_generic_Nd_kernel_impl, used with >1 intra-op thread)
    interpolates along W within each of the two source rows, then between the rows, in float32
    with fused multiply-adds; the separable passes below round exactly as it does. (With one thread
    PyTorch takes its channels-last kernel, which sums four products and differs by <= 1 ulp.)
    Output rows go in blocks so the float64 temporaries stay in cache (about 2x faster at 800x1333).
    """
    in_h, in_w = x.shape[:2]
    h0, h1, a0, a1 = _torch_linear_taps(in_h, hw[0])
    w0, w1, b0, b1 = _torch_linear_taps(in_w, hw[1])
    out = np.empty((hw[0], hw[1], x.shape[2]), np.float32)
    for start in range(0, hw[0], rows_per_block):
        block = slice(start, start + rows_per_block)
        top, bottom = int(h0[block].min()), int(h1[block].max()) + 1  # source rows this block reads
        src = x[top:bottom]
        rows = _lerp(np.take(src, w0, axis=1), b0[:, None], np.take(src, w1, axis=1), b1[:, None])  # along W
        out[block] = _lerp(np.take(rows, h0[block] - top, axis=0), a0[block, None, None],
                           np.take(rows, h1[block] - top, axis=0), a1[block, None, None])  # then along H
    return out


# ---------------------------------------------------------------- scikit-image and OpenCV, called as the frameworks call them


def skimage_float(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W, C) float64 -> (h, w, C) float32: yhenon's Resizer, skimage.transform.resize with its
    defaults (order 1, mode "reflect", Gaussian anti-aliasing when shrinking, clip), then float32.
    Called even when the size is unchanged, as yhenon does."""
    from skimage.transform import resize

    out = resize(x, tuple(hw), order=1, mode="reflect", clip=True, preserve_range=False, anti_aliasing=None)
    return out.astype(np.float32)


def cv2_float(x: np.ndarray, hw: tuple[int, int], scale: float | None) -> np.ndarray:
    """(H, W, C) float32 -> (h, w, C) float32 with cv2.resize INTER_LINEAR.

    With `scale`, as Detectron: cv2.resize(x, None, fx=scale, fy=scale). OpenCV then interpolates
    with 1/scale, not with in/out sizes, and sizes each side round(side * scale) itself; that must
    be the spec's `hw`. Without (a fixed-size stretch), dsize = hw.
    """
    import cv2

    h, w = hw
    x = np.ascontiguousarray(x)
    if scale is None:
        return cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.resize(x, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    if out.shape[:2] != (h, w):
        raise UsageError(
            f"cv2.resize(fx=fy={scale}) made {out.shape[0]}x{out.shape[1]} where the spec's rounding gives "
            f"{h}x{w}; use preprocess.rounding='detectron' with resize_impl='cv2_float'"
        )
    return out


def cv2_uint8(pixels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 with cv2.resize(dsize=(w, h)) and its default INTER_LINEAR,
    OpenCV's fixed-point uint8 kernel: MindSpore RetinaNet's `cv2.resize(image, (input_w, input_h))`."""
    import cv2

    h, w = hw
    return cv2.resize(np.ascontiguousarray(pixels), (w, h), interpolation=cv2.INTER_LINEAR)
