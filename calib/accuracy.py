"""Accuracy of an FP16 or INT8 file against its FP32 source, in ONNX Runtime on the CPU.

Raw head outputs are compared per output and per FPN level (SQNR, cosine, max-abs) on held-out
real photos: scikit-image ships them, so the check needs no network and never sees the
calibration images. Detections are scored as COCO mAP when the calibration set has annotations.
"""

from __future__ import annotations

import dataclasses
import re
from importlib import resources
from typing import Any

import numpy as np
import onnxruntime as ort

from retinanet_trt.export.parity import compare_outputs
from retinanet_trt.runtime.images import load_image
from retinanet_trt.runtime.preprocess import preprocess
from retinanet_trt.spec import ModelSpec

# Real photos bundled with scikit-image (people, animals, objects, vehicles, a street scene).
HELD_OUT_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")
_LEVEL = re.compile(r"^(cls|box)_p(\d)$")


def run_all(sess: ort.InferenceSession, inputs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One dict of outputs per input array."""
    name = sess.get_inputs()[0].name
    outs = [o.name for o in sess.get_outputs()]
    return [dict(zip(outs, sess.run(None, {name: x}), strict=True)) for x in inputs]


def held_out_inputs(spec: ModelSpec, input_hw: tuple[int, int] | None, batch: int = 1) -> tuple[list[np.ndarray], list[str], bool]:
    """(inputs, photo names, shrunk) for the held-out photos, pre-processed as the runner does.

    A photo that the framework's resize makes too large for a static input is scaled down further
    to fit, as trt-infer does (resize_plan.plan_resize, whatever spec.preprocess.oversize says:
    raw-output parity does not depend on it, and this keeps every photo in the check); `shrunk`
    says whether any was.
    """
    spec = dataclasses.replace(spec, preprocess=dataclasses.replace(spec.preprocess, oversize="shrink"))
    folder = resources.files("skimage.data")
    inputs, names = [], []
    shrunk = False
    for photo in HELD_OUT_PHOTOS:
        with resources.as_file(folder / photo) as path:
            image = load_image(path)
        prepared = preprocess([image] * batch, spec, input_hw)
        shrunk = shrunk or prepared.metas[0].shrunk
        inputs.append(prepared.images)
        names.append(photo.split(".")[0])
    return inputs, names, shrunk


def compare_runs(reference: list[dict[str, np.ndarray]], candidate: list[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """compare_outputs over all runs at once (each output flattened and concatenated), so SQNR is
    signal power over error power of the whole set rather than a mean of per-image ratios."""
    ref = {k: np.concatenate([r[k].ravel() for r in reference]) for k in reference[0]}
    cand = {k: np.concatenate([c[k].ravel() for c in candidate]) for k in reference[0]}
    return compare_outputs(ref, cand)


def level_rows(cmp: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """One row per FPN level: cls and box SQNR (dB), cosine and max-abs error."""
    levels: dict[int, dict[str, Any]] = {}
    for name, stats in cmp.items():
        m = _LEVEL.match(name)
        if not m:
            continue
        row = levels.setdefault(int(m.group(2)), {"level": f"p{m.group(2)}"})
        kind = m.group(1)
        row[f"{kind}_sqnr_db"] = stats["sqnr_db"]
        row[f"{kind}_cosine"] = stats["cosine"]
        row[f"{kind}_max_abs"] = stats["max_abs"]
    return [levels[k] for k in sorted(levels)]


def worst_sqnr(cmp: dict[str, dict[str, float]]) -> float:
    return min(s["sqnr_db"] for s in cmp.values())
