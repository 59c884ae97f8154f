"""What is fed to every backend: the images, the bench resize and the input size."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.runtime.detector import Detector
from retinanet_trt.runtime.images import LoadedImage, find_images, load_image
from retinanet_trt.runtime.resize_plan import padded_side

MAX_SIDE = 8192  # larger inputs are a typo, and would exhaust memory before saying so


def synthetic_image(input_hw: tuple[int, int]) -> LoadedImage:
    """scikit-image's `astronaut` photo resized to H x W: real-photo statistics, no file, no network."""
    from PIL import Image
    from skimage import data

    h, w = input_hw
    pixels = np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.Resampling.BILINEAR))
    return LoadedImage(pixels, f"skimage astronaut {h}x{w}")


def bench_images(paths: Sequence[str | os.PathLike[str]] | None, input_hw: tuple[int, int]) -> list[LoadedImage]:
    """Decoded images for the timed loop (decoding is not part of the measured pre-process)."""
    if paths is None:
        return [synthetic_image(input_hw)]
    found = find_images(paths)
    if not found:
        raise UsageError(f"no images found in {', '.join(map(str, paths))}; give a folder with .jpg/.png files")
    return [load_image(p) for p in found]


def onnx_fixed_hw(path: str) -> tuple[int, int] | None:
    """(H, W) of an ONNX file's input when both are fixed numbers, else None."""
    import onnx

    dims = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
        return int(dims[2].dim_value), int(dims[3].dim_value)
    return None


def resolve_input_hw(model: str, detectors: dict[str, Detector], requested: tuple[int, int] | None) -> tuple[int, int]:
    """The one network input size for all backends; UsageError for sizes the models cannot take."""
    fixed = {name: d.fixed_input_hw for name, d in detectors.items() if d.fixed_input_hw is not None}
    model_hw = onnx_fixed_hw(model) if model.endswith(".onnx") else None
    if model_hw is not None:  # also binds the torch backend, which rebuilds the ONNX file's model
        fixed.setdefault("ONNX", model_hw)
    if len(set(fixed.values())) > 1:
        sizes = ", ".join(f"{n} {hw[0]}x{hw[1]}" for n, hw in fixed.items())
        raise UsageError(f"the backends' models have different fixed input sizes ({sizes}); compare models of one size")
    spec = next(iter(detectors.values())).spec
    if requested is None:
        if fixed:
            return next(iter(fixed.values()))
        from retinanet_trt.runtime.resize_plan import default_input_hw

        return default_input_hw(spec)
    h, w = requested
    if h <= 0 or w <= 0 or h > MAX_SIDE or w > MAX_SIDE:
        raise UsageError(f"--input-size {h} {w}: each side must be between 1 and {MAX_SIDE}")
    for name, hw in fixed.items():
        if hw != (h, w):
            raise UsageError(f"--input-size {h} {w} does not match the fixed input {hw[0]}x{hw[1]} of the {name} "
                             f"model; drop --input-size or re-export with --input-size {h} {w} (or --dynamic)")
    from retinanet_trt.export.pipeline import check_input_size

    check_input_size(spec, (h, w))
    pre = spec.preprocess
    if (padded_side(h, pre), padded_side(w, pre)) != (h, w):
        raise UsageError(f"--input-size {h} {w}: the pre-process pads to multiples of {pre.size_divisibility}; "
                         "give sides that are multiples of it")
    return h, w


