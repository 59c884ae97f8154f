"""Pixel-exact pre-processing per framework (spec.preprocess.resize_impl).

The reference side of every test is the framework's own input pipeline, written here from its
code (facts/checkpoint-formats.md 1g, 4f, 5f) with the real library it resizes with:
torchvision normalises with torch ops and calls F.interpolate, yhenon normalises in NumPy and calls
skimage.transform.resize, Detectron subtracts its means with cv2 and calls cv2.resize(fx, fy).
Against them: our network input (tensor tests here); detections against each framework's own
pipeline at its padded test sizes are in test_framework_test_sizes.py.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time

import checkpoint_factory as cf
import mindspore_factory as mf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from framework_inputs import framework_input, photo, random_image, torch_threads

from retinanet_trt.errors import UsageError
from retinanet_trt.importers import IMPORTERS
from retinanet_trt.runtime import resize
from retinanet_trt.runtime.preprocess import preprocess
from retinanet_trt.spec import RESIZE_IMPLS, ModelSpec
from retinanet_trt.spec.presets import PRESETS, get_preset


def importer_spec(framework: str) -> ModelSpec:
    """The spec an importer writes for the framework's R50 checkpoint (shapes only, no weights)."""
    keys = mf.mindspore_keys() if framework == "mindspore" else cf.key_spec(framework)
    zeros = {k: np.broadcast_to(np.zeros((), np.float32), shape) for k, (_, shape) in keys.items()}
    return IMPORTERS["torchvision" if framework.startswith("torchvision") else framework].convert(zeros, []).spec


FRAMEWORKS = ["torchvision_v1", "yhenon", "detectron", "detectron2", "maskrcnn_benchmark"]


# ---------------------------------------------------------------- the kernels against the real library


@pytest.mark.parametrize(
    ("in_hw", "out_hw"),
    [((37, 53), (85, 121)), ((37, 53), (200, 311)), ((53, 37), (21, 15)), ((37, 53), (74, 106)),
     ((37, 53), (37, 90)), ((90, 130), (61, 79)), ((1, 7), (3, 20)), ((427, 640), (799, 1198))],
)
def test_torch_bilinear_matches_interpolate(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    """Any float image and size (up, down, one axis only, exactly 2x, a 1-pixel side): bit-exact with
    PyTorch's generic kernel; within an ulp of its one-thread channels-last kernel."""
    x = np.random.default_rng(sum(in_hw + out_hw)).standard_normal((*in_hw, 3)).astype(np.float32) * 2
    ours = resize.torch_bilinear(x, out_hw)
    t = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()
    diffs = {}
    for threads in (2, 1):
        with torch_threads(threads):
            theirs = F.interpolate(t, size=out_hw, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
        diffs[threads] = float(np.abs(ours - theirs).max())
    print(f"\n{in_hw} -> {out_hw}: max |ours - torch| 2 threads {diffs[2]:.1e}, 1 thread {diffs[1]:.1e}")
    # torch takes the channels-last kernel for small outputs (h + w <= 128) whatever the threads.
    assert diffs[2] == 0.0 or sum(out_hw) <= 128
    assert max(diffs.values()) <= 2e-6


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(
    ("what", "hw"),
    [("random", (37, 53)), ("random", (600, 900)), ("random", (900, 1350)), ("random", (1000, 1500)),
     ("photo", (400, 600)), ("photo", (1000, 1500))],
)
def test_network_input_matches_the_framework(framework: str, what: str, hw: tuple[int, int]) -> None:
    """preprocess() == the framework's own padded input tensor, up- and down-scaled, odd sizes."""
    rgb = random_image(hw, seed=hw[0]) if what == "random" else photo(hw)
    spec = importer_spec(framework)
    t0 = time.perf_counter()
    batch = preprocess([rgb], spec)
    ours_ms = (time.perf_counter() - t0) * 1e3
    with torch_threads(2):
        theirs, resized = framework_input(framework, rgb)
    assert batch.metas[0].resized_hw == resized and batch.images.shape == tuple(theirs.shape)
    diff = float(np.abs(batch.images - theirs.numpy()).max())
    print(f"\n{framework} {what} {hw} -> {resized}: max |ours - framework| {diff:.1e}, pre-process {ours_ms:.0f} ms")
    assert diff <= 1e-6


def test_torch_bilinear_is_fast_at_detection_sizes() -> None:
    x = np.random.default_rng(0).standard_normal((1000, 1500, 3)).astype(np.float32)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        resize.torch_bilinear(x, (800, 1200))
        best = min(best, time.perf_counter() - t0)
    print(f"\n1000x1500 -> 800x1200: {best * 1e3:.0f} ms")
    assert best < 0.25  # ~35 ms here; generous for a loaded 2-core machine


# ---------------------------------------------------------------- spec: the field, its validation, who sets what


def test_resize_impl_is_validated_with_the_choices() -> None:
    spec = get_preset("tiny")
    spec.preprocess.resize_impl = "opencv"
    with pytest.raises(UsageError, match=r"preprocess\.resize_impl='opencv' \(use pillow_uint8, "
                                         r"torch_bilinear_float, skimage_float, cv2_float, cv2_uint8\)"):
        spec.validate()
    spec.preprocess.resize_impl, spec.preprocess.interpolation = "torch_bilinear_float", "bicubic"
    with pytest.raises(UsageError, match=r"resizes bilinearly only, not interpolation='bicubic'"):
        spec.validate()
    spec.preprocess.resize_impl, spec.preprocess.interpolation = "cv2_float", "bilinear"
    with pytest.raises(UsageError, match=r"rounding='round_half_up' needs 'detectron' or 'round'"):
        spec.validate()


def test_spec_json_round_trips_and_old_json_loads_as_pillow() -> None:
    spec = get_preset("torchvision_v1")
    assert ModelSpec.from_json(spec.to_json()).preprocess.resize_impl == "torch_bilinear_float"
    old = spec.to_dict()
    del old["preprocess"]["resize_impl"]  # artifacts written before the field: Pillow, as they ran
    assert ModelSpec.from_dict(old).preprocess.resize_impl == "pillow_uint8"


EXPECTED_IMPL = {
    "retinanet_r50_fpn": "pillow_uint8", "torchvision_v1": "torch_bilinear_float",
    "torchvision_v2": "torch_bilinear_float", "r50_fpn1024_1class": "pillow_uint8", "tiny": "pillow_uint8",
    "detectron2": "pillow_uint8", "maskrcnn_benchmark": "pillow_uint8", "yhenon": "skimage_float",
    "detectron": "cv2_float", "mindspore": "cv2_uint8",
}


@pytest.mark.parametrize("name", [*PRESETS, "import:torchvision_v1", "import:torchvision_v2", "import:detectron2",
                                  "import:maskrcnn_benchmark", "import:yhenon", "import:detectron", "import:mindspore"])
def test_every_preset_and_importer_sets_its_resize_impl(name: str) -> None:
    framework = name.removeprefix("import:")
    spec = importer_spec(framework) if name.startswith("import:") else get_preset(name)
    assert spec.preprocess.resize_impl == EXPECTED_IMPL[framework]
    assert set(EXPECTED_IMPL.values()) == set(RESIZE_IMPLS)


def test_the_runtime_resizes_without_importing_torch() -> None:
    code = (
        "import sys, numpy as np\n"
        "from retinanet_trt.spec.presets import torchvision_v1\n"
        "from retinanet_trt.runtime.preprocess import preprocess\n"
        "spec = torchvision_v1()\n"
        "for impl in ('pillow_uint8', 'torch_bilinear_float', 'skimage_float'):\n"
        "    spec.preprocess.resize_impl = impl\n"
        "    preprocess([np.zeros((30, 40, 3), np.uint8)], spec)\n"
        "assert 'torch' not in sys.modules, 'the runtime imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cv2_refuses_a_size_it_would_not_make() -> None:
    with pytest.raises(UsageError, match=r"cv2.resize\(fx=fy=0\.5\) made 10x10 where the spec's rounding gives 10x11"):
        resize.cv2_float(np.zeros((20, 20, 3), np.float32), (10, 11), 0.5)


# Detections against each framework's own pipeline, at its own padded test sizes: test_framework_test_sizes.py.
