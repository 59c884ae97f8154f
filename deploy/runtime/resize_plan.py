"""What size each image becomes: the framework's resize, its padding, and the fit to a network input.

The arithmetic of each framework's resize (resize_scale, resized_hw: facts/checkpoint-formats.md
1g, 2f, 3f, 4f, 5f) and padding (padded_side), and the fit rule: an image keeps its framework's
resize whenever the result fits the network input, a fixed one (a static export) or the largest a
dynamic one accepts (a TensorRT engine's profile); only an image that would not fit is scaled
down further (preprocess.oversize "shrink", its meta says `shrunk`) or refused ("refuse").
runtime/preprocess.py makes the tensors; this module only sizes them. Needs no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.runtime.images import ImageLoadError, LoadedImage
from retinanet_trt.runtime.types import ImageMeta
from retinanet_trt.spec import ModelSpec, PreprocessSpec


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


def default_input_hw(spec: ModelSpec) -> tuple[int, int]:
    """The largest image the spec's resize produces, padded to 32: e.g. 800x1344 for 800/1333; a
    fixed size padded as the pre-process pads it (MindSpore's 600x600 stays 600x600)."""
    pre = spec.preprocess
    if pre.resize == "fixed" and pre.fixed_size:
        h, w = pre.fixed_size
        return padded_side(h, pre), padded_side(w, pre)
    h, w = pre.min_size, pre.max_size
    return (-(-h // 32) * 32, -(-w // 32) * 32)


def network_input_hw(original_hw: tuple[int, int], spec: ModelSpec) -> tuple[int, int]:
    """(H, W) of the padded network input for one image of this size (e.g. a static export's shape)."""
    rh, rw = resized_hw(original_hw, spec.preprocess)
    return padded_side(rh, spec.preprocess), padded_side(rw, spec.preprocess)


@dataclass(frozen=True)
class ResizePlan:
    """How one image is resized for a network input.

    hw: (h, w) after resizing, before padding; scale: the one factor applied to both sides (what
    cv2.resize is given as fx = fy), or None where the resize has none (a "fixed" stretch,
    per-side rounding); shrunk: the framework's own resize did not fit the network input, so
    the image was scaled down further (aspect kept) and its detections are not the framework's.
    """

    hw: tuple[int, int]
    scale: float | None
    shrunk: bool = False


def _framework_scale(original_hw: tuple[int, int], pre: PreprocessSpec) -> float | None:
    if pre.resize == "none":
        return 1.0
    if pre.resize == "shortest_edge" and pre.rounding in ("floor", "round", "detectron"):
        return resize_scale(original_hw, pre)
    return None


def plan_resize(original_hw: tuple[int, int], pre: PreprocessSpec, input_hw: tuple[int, int] | None = None,
                max_hw: tuple[int, int] | None = None) -> ResizePlan:
    """The framework's resize of an image, kept whenever it fits the network input.

    input_hw: a fixed network input (the image is padded to it); max_hw: the largest input a
    dynamic network accepts (a TensorRT engine's profile; the image is padded per spec, and that
    padded size must fit). An image whose framework-resized size does not fit is, with
    pre.oversize "shrink", scaled by the largest factor s that fits the box (input_hw, or the
    largest size that pads to within max_hw): for shortest_edge / none, s = min(H / h0, W / w0) of
    the original (h0, w0), sides round(h0 * s), round(w0 * s) (as cv2.resize(fx=fy=s) sizes them);
    for a "fixed" stretch, the fixed size is scaled so. With pre.oversize "refuse" it raises
    ImageLoadError. With neither bound the framework's resize is returned as is.
    """
    hw = resized_hw(original_hw, pre)
    if input_hw is not None:
        box, what = (int(input_hw[0]), int(input_hw[1])), f"the fixed network input {input_hw[0]}x{input_hw[1]}"
        fits = hw[0] <= box[0] and hw[1] <= box[1]
    elif max_hw is not None:
        box = (_largest_unpadded(int(max_hw[0]), pre), _largest_unpadded(int(max_hw[1]), pre))
        what = f"the network's largest input {max_hw[0]}x{max_hw[1]}"
        fits = padded_side(hw[0], pre) <= max_hw[0] and padded_side(hw[1], pre) <= max_hw[1]
    else:
        return ResizePlan(hw, _framework_scale(original_hw, pre))
    if fits:
        return ResizePlan(hw, _framework_scale(original_hw, pre))
    if pre.oversize == "refuse":
        raise ImageLoadError(
            f"{hw[0]}x{hw[1]} after the model's resize, larger than {what} (preprocess.oversize 'refuse'); "
            "use preprocess.oversize 'shrink', or export (build) with a larger or dynamic input"
        )
    if min(box) < 1:
        raise ImageLoadError(f"{what} leaves no room for an image after padding to {pre.size_divisibility}")
    base = tuple(original_hw) if pre.resize in ("shortest_edge", "none") else hw
    s = min(box[0] / base[0], box[1] / base[1])
    # s * side is within an ulp of the box side on the binding axis: the min() only absorbs that ulp.
    fitted = (min(box[0], round(base[0] * s)), min(box[1], round(base[1] * s)))
    if min(fitted) < 1:
        raise ImageLoadError(f"{original_hw[0]}x{original_hw[1]} pixels shrink to {fitted[0]}x{fitted[1]} to fit "
                             f"{what}; too thin to detect in (crop or pad it)")
    return ResizePlan(fitted, s if base == tuple(original_hw) else None, shrunk=True)


def _largest_unpadded(limit: int, pre: PreprocessSpec) -> int:
    """The largest side that padded_side keeps within `limit` (0 when none does)."""
    side = limit
    while side > 0 and padded_side(side, pre) > limit:
        side -= 1  # at most size_divisibility steps
    return side


def _unfit_message(image: LoadedImage, resized: tuple[int, int]) -> str:
    h, w = image.hw
    return (f"{image.source}: {h}x{w} pixels, which the spec's resize makes {resized[0]}x{resized[1]}; "
            "too thin to detect in (crop or pad it)")


def unfit_reason(image: LoadedImage, pre: PreprocessSpec, input_hw: tuple[int, int] | None = None,
                 max_hw: tuple[int, int] | None = None) -> str | None:
    """Why the spec's resize cannot make a network input of this image (e.g. 20000x1, or one too
    large for the network's input under oversize 'refuse'), or None."""
    resized = resized_hw(image.hw, pre)
    if min(resized) < 1:
        return _unfit_message(image, resized)
    try:
        plan_resize(image.hw, pre, input_hw, max_hw)
    except ImageLoadError as exc:
        return f"{image.source}: {exc}"
    return None


def plan_batch(images: Sequence[LoadedImage], pre: PreprocessSpec, input_hw: tuple[int, int] | None = None,
               max_hw: tuple[int, int] | None = None) -> tuple[list[ResizePlan], tuple[int, int]]:
    """One ResizePlan per image and the (H, W) the batch is padded to: `input_hw` when fixed, else
    the largest resized size padded per spec (within `max_hw` by plan_resize's fit). Raises
    ImageLoadError naming the first image that cannot be fitted."""
    for image in images:
        reason = unfit_reason(image, pre, input_hw, max_hw)
        if reason:
            raise ImageLoadError(reason)
    plans = [plan_resize(image.hw, pre, input_hw, max_hw) for image in images]
    if input_hw is not None:
        return plans, (int(input_hw[0]), int(input_hw[1]))
    return plans, (padded_side(max(p.hw[0] for p in plans), pre), padded_side(max(p.hw[1] for p in plans), pre))


def _resize_words(pre: PreprocessSpec) -> str:
    if pre.resize == "shortest_edge":
        what = f"shortest edge {pre.min_size}, longest at most {pre.max_size}"
    elif pre.resize == "fixed":
        what = f"stretch to {pre.fixed_size[0]}x{pre.fixed_size[1]}" if pre.fixed_size else "stretch"
    else:
        what = "no resize"
    return f"{what} ({pre.rounding} rounding, {pre.resize_impl})"


def _exact_aspects(pre: PreprocessSpec, box_short: int, box_long: int) -> list[float] | None:
    """[lo, hi] of long/short aspects whose shortest-edge resize fits a box whose side along the
    image's short side is box_short and along its long side box_long (hi None: no upper bound), or
    None when no aspect fits. Exact up to the framework's one-pixel rounding."""
    m, big = pre.min_size, pre.max_size
    # resized short side = min(m, big / a) <= box_short, resized long side = min(m * a, big) <= box_long
    lo = 1.0 if m <= box_short else big / box_short
    hi = None if big <= box_long else box_long / m
    if hi is not None and hi < lo:
        return None
    return [round(lo, 3), None if hi is None else round(hi, 3)]


def fixed_input_fit(pre: PreprocessSpec, input_hw: tuple[int, int]) -> dict[str, object]:
    """What a fixed network input keeps of the framework's resize (plan_resize): the resize kept,
    the image aspects (long/short, landscape and portrait) whose resized size fits and so stay
    exact, and what happens to the others. For the export report."""
    h, w = input_hw
    out: dict[str, object] = {"framework_resize": _resize_words(pre), "input_hw": [h, w], "oversize": pre.oversize}
    if pre.resize == "shortest_edge":
        land, port = _exact_aspects(pre, h, w), _exact_aspects(pre, w, h)
        out.update(exact_landscape_aspects=land, exact_portrait_aspects=port)

        def words(r: list[float] | None, kind: str) -> str:
            if r is None:
                return f"no {kind} image"
            if r[0] <= 1.0 and r[1] is None:
                return f"every {kind} image"
            lo = "" if r[0] <= 1.0 else f"from {r[0]:g} "
            return f"{kind} images of aspect {lo}{'up to ' + format(r[1], 'g') if r[1] else 'on'}"
        exact = f"exact for {words(land, 'landscape')} and {words(port, 'portrait')} (long/short)"
    elif pre.resize == "fixed":
        fits = bool(pre.fixed_size) and pre.fixed_size[0] <= h and pre.fixed_size[1] <= w  # type: ignore[index]
        out["exact_all"] = fits
        exact = "exact for every image" if fits else "the stretch does not fit: no image is exact"
    else:
        exact = f"exact for images up to {h}x{w} pixels"
    other = ("scaled down further to fit (aspect kept, not exact; trt-infer/trt-eval name them)"
             if pre.oversize == "shrink" else "refused with the reason (preprocess.oversize 'refuse')")
    out["summary"] = (f"keeps the framework's resize, {out['framework_resize']}, at the fixed {h}x{w} input: {exact}; "
                      f"the others are {other}")
    return out


def shrunk_line(tool: str, metas: Sequence[ImageMeta], input_hw: tuple[int, int] | None, shown: int = 5,
                max_hw: tuple[int, int] | None = None) -> str | None:
    """One line naming the images scaled down further to fit the network input (ImageMeta.shrunk), or None."""
    shrunk = [m for m in metas if m.shrunk]
    if not shrunk:
        return None
    if input_hw:
        where = f"the fixed {input_hw[0]}x{input_hw[1]} input"
    elif max_hw:
        where = f"the network's largest {max_hw[0]}x{max_hw[1]} input"
    else:
        where = "the network input"
    names = ", ".join(f"{m.source} ({m.original_hw[0]}x{m.original_hw[1]} -> {m.resized_hw[0]}x{m.resized_hw[1]})"
                      for m in shrunk[:shown])
    more = f" and {len(shrunk) - shown} more" if len(shrunk) > shown else ""
    return (f"{tool}: {len(shrunk)} image(s) larger than {where} after the model's resize were scaled down further "
            f"(detections not exact to the framework; export a larger input or use --oversize refuse): {names}{more}")
