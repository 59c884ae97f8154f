"""The fit rule of a network input (resize_plan.plan_resize), fixed or the largest a dynamic one
accepts (a TensorRT engine's profile): the framework's resize is kept for every image whose resized
(padded, for a dynamic input) size fits; only the others are shrunk (or refused), and are named.

Properties over many image sizes for every importer's and preset's resize, the exact-aspect range
the export report states against a brute-force check, and trt-infer / trt-eval naming the
images they shrank."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_resize_exact import importer_spec

from retinanet_trt.cli import eval as eval_cli
from retinanet_trt.cli import infer as infer_cli
from retinanet_trt.runtime.images import ImageLoadError
from retinanet_trt.runtime.preprocess import preprocess
from retinanet_trt.runtime.resize_plan import fixed_input_fit, network_input_hw, padded_side, plan_resize, resized_hw
from retinanet_trt.spec import PreprocessSpec
from retinanet_trt.spec.presets import PRESETS, get_preset

FRAMEWORKS = ["torchvision_v1", "detectron2", "maskrcnn_benchmark", "yhenon", "detectron", "mindspore"]
SPECS = {**{f"import:{f}": (lambda f=f: importer_spec(f).preprocess) for f in FRAMEWORKS},
         **{name: (lambda name=name: get_preset(name).preprocess) for name in PRESETS}}
INPUTS = [(800, 1344), (896, 1280), (640, 928), (608, 1344), (480, 640), (600, 600), (1344, 800), (256, 320)]


def _sizes(n: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(h), int(w)) for h, w in rng.integers(20, 3000, (n, 2))]


@pytest.mark.parametrize("name", list(SPECS))
def test_the_framework_resize_is_kept_whenever_it_fits(name: str) -> None:
    pre = SPECS[name]()
    kept = shrunk = 0
    for input_hw in INPUTS:
        for hw in _sizes(300, seed=input_hw[0] + input_hw[1]):
            own = resized_hw(hw, pre)
            plan = plan_resize(hw, pre, input_hw)
            if own[0] <= input_hw[0] and own[1] <= input_hw[1]:
                assert plan.hw == own and not plan.shrunk, (hw, input_hw)
                kept += 1
                continue
            shrunk += 1
            assert plan.shrunk and plan.hw[0] <= input_hw[0] and plan.hw[1] <= input_hw[1], (hw, input_hw, plan)
            # Aspect kept (to rounding), and the box is filled along its binding side.
            base = hw if pre.resize != "fixed" else tuple(pre.fixed_size)
            aspect = base[1] / base[0]  # each side rounds by at most half a pixel
            assert abs(plan.hw[1] / plan.hw[0] - aspect) <= (0.5 + 0.5 * aspect) / (plan.hw[0] - 1)
            assert plan.hw[0] == input_hw[0] or plan.hw[1] == input_hw[1]
    assert kept and shrunk


@pytest.mark.parametrize("name", [f"import:{f}" for f in FRAMEWORKS])
def test_without_a_fixed_input_nothing_changes(name: str) -> None:
    pre = SPECS[name]()
    for hw in _sizes(200, seed=5):
        assert plan_resize(hw, pre).hw == resized_hw(hw, pre) and not plan_resize(hw, pre).shrunk


MAX_INPUTS = [(800, 1344), (1344, 1344), (640, 928), (608, 1344), (500, 700), (1000, 1000), (256, 256), (160, 320)]


@pytest.mark.parametrize("name", list(SPECS))
def test_a_dynamic_input_keeps_the_resize_within_its_largest_size(name: str) -> None:
    """max_hw (a dynamic engine's profile max): an image whose padded framework resize fits keeps it
    exactly; any other is shrunk, aspect kept, to the largest size whose padding still fits."""
    pre = SPECS[name]()
    kept = shrunk = 0
    for max_hw in MAX_INPUTS:
        for hw in _sizes(200, seed=max_hw[0] * 7 + max_hw[1]):
            own = resized_hw(hw, pre)
            plan = plan_resize(hw, pre, max_hw=max_hw)
            padded = (padded_side(plan.hw[0], pre), padded_side(plan.hw[1], pre))
            assert padded[0] <= max_hw[0] and padded[1] <= max_hw[1], (hw, max_hw, plan)
            if padded_side(own[0], pre) <= max_hw[0] and padded_side(own[1], pre) <= max_hw[1]:
                assert plan.hw == own and not plan.shrunk, (hw, max_hw)
                kept += 1
                continue
            shrunk += 1
            assert plan.shrunk
            base = hw if pre.resize != "fixed" else tuple(pre.fixed_size)
            aspect = base[1] / base[0]
            assert abs(plan.hw[1] / plan.hw[0] - aspect) <= (0.5 + 0.5 * aspect) / (plan.hw[0] - 1)
            # the binding side is as large as padding allows: one pixel more would pad past the max
            grown = [(padded_side(plan.hw[0] + 1, pre) > max_hw[0]), (padded_side(plan.hw[1] + 1, pre) > max_hw[1])]
            assert any(grown), (hw, max_hw, plan)
    assert kept and shrunk


def test_a_dynamic_input_under_refuse_names_its_largest_size() -> None:
    pre = dataclasses.replace(importer_spec("detectron2").preprocess, oversize="refuse")
    with pytest.raises(ImageLoadError, match="larger than the network's largest input 640x928"):
        plan_resize((1000, 1500), pre, max_hw=(640, 928))
    assert plan_resize((500, 700), pre, max_hw=(1344, 1344)).hw == resized_hw((500, 700), pre)


def test_the_detector_fits_a_dynamic_engine_s_largest_input() -> None:
    """A backend that says max_input_hw (TrtBackend: its profile's max) bounds every batch the
    Detector prepares, and the metas name the images shrunk; a fitting image is untouched."""
    from retinanet_trt.runtime.detector import Detector

    class LargestOnly:  # the attributes a Detector reads of a dynamic TensorRT backend
        fixed_input_hw = None
        max_input_hw = (256, 352)
        input_format = "float32_nchw"

        def __init__(self) -> None:
            self.spec = get_preset("tiny")  # 256 / 320, divisibility 32

    det = Detector(LargestOnly())  # type: ignore[arg-type]
    small, tall = np.zeros((100, 120, 3), np.uint8), np.zeros((400, 200, 3), np.uint8)
    batch = det.prepare([small, tall])
    assert batch.metas[0].resized_hw == resized_hw((100, 120), det.spec.preprocess) == (256, 307)
    assert not batch.metas[0].shrunk
    assert resized_hw((400, 200), det.spec.preprocess) == (320, 160)  # pads to 320 rows: more than 256
    assert batch.metas[1].shrunk and batch.metas[1].resized_hw == (256, 128)
    assert batch.images.shape[-2:] == (256, 320)  # padded per spec, within the max, not to it


def test_refuse_raises_for_exactly_the_images_that_do_not_fit() -> None:
    pre = dataclasses.replace(importer_spec("detectron2").preprocess, oversize="refuse")
    for hw in _sizes(200, seed=9):
        own = resized_hw(hw, pre)
        if own[0] <= 896 and own[1] <= 1280:
            assert plan_resize(hw, pre, (896, 1280)).hw == own
        else:
            with pytest.raises(ImageLoadError, match="larger than the fixed network input 896x1280"):
                plan_resize(hw, pre, (896, 1280))


@pytest.mark.parametrize("impl", ["pillow_uint8", "torch_bilinear_float", "skimage_float", "cv2_float", "cv2_uint8"])
def test_a_fitting_image_gets_the_same_pixels_as_with_a_dynamic_input(impl: str) -> None:
    """Zero padding is the only difference a fixed input makes to an image that fits."""
    framework = {"pillow_uint8": "detectron2", "torch_bilinear_float": "torchvision_v1", "skimage_float": "yhenon",
                 "cv2_float": "detectron", "cv2_uint8": "mindspore"}[impl]
    spec = importer_spec(framework)
    rgb = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    dynamic = preprocess([rgb], spec)
    h, w = dynamic.metas[0].resized_hw
    fixed_hw = (network_input_hw(rgb.shape[:2], spec)[0] + 64, network_input_hw(rgb.shape[:2], spec)[1] + 128)
    fixed = preprocess([rgb], spec, input_hw=fixed_hw)
    assert fixed.images.shape[-2:] == fixed_hw and not fixed.metas[0].shrunk
    assert np.array_equal(fixed.images[0, :, :h, :w], dynamic.images[0, :, :h, :w])
    assert not fixed.images[0, :, h:, :].any() and not fixed.images[0, :, :, w:].any()


@pytest.mark.parametrize("input_hw", INPUTS)
@pytest.mark.parametrize("name", ["import:detectron", "import:yhenon", "import:detectron2", "import:torchvision_v1",
                                  "import:maskrcnn_benchmark"])
def test_the_reported_exact_aspects_agree_with_the_resize(name: str, input_hw: tuple[int, int]) -> None:
    """fixed_input_fit's aspect ranges, checked by brute force: aspects well inside fit, well outside do not."""
    pre = SPECS[name]()
    fit = fixed_input_fit(pre, input_hw)
    assert fit["input_hw"] == list(input_hw) and str(pre.min_size) in str(fit["framework_resize"])
    for orientation, key in (("landscape", "exact_landscape_aspects"), ("portrait", "exact_portrait_aspects")):
        rng = fit[key]
        for aspect in np.linspace(1.0, 4.0, 61):
            for short in (300, 700, 1500):
                long_ = int(round(short * aspect))
                hw = (short, long_) if orientation == "landscape" else (long_, short)
                own = resized_hw(hw, pre)
                fits = own[0] <= input_hw[0] and own[1] <= input_hw[1]
                inside = rng is not None and rng[0] + 0.01 <= aspect and (rng[1] is None or aspect <= rng[1] - 0.01)
                outside = rng is None or aspect < rng[0] - 0.01 or (rng[1] is not None and aspect > rng[1] + 0.01)
                if inside:
                    assert fits, (orientation, aspect, hw, own, fit)
                elif outside:
                    assert not fits, (orientation, aspect, hw, own, fit)


def test_the_report_for_the_issue_case_detectron_896x1280() -> None:
    fit = fixed_input_fit(importer_spec("detectron").preprocess, (896, 1280))
    assert fit["exact_landscape_aspects"] == [1.0, 1.6] and fit["exact_portrait_aspects"] == [1.0, 1.12]
    assert "shortest edge 800, longest at most 1333" in fit["summary"]
    fixed = fixed_input_fit(PreprocessSpec(resize="fixed", fixed_size=[600, 600]), (600, 600))
    assert fixed["exact_all"] is True


# ---------------------------------------------------------------- the CLIs name shrunk images


def _images(folder: Path) -> list[Path]:
    """Three of the demo's synthetic images (shapes the demo model finds) brought to three aspects."""
    from retinanet_trt.demo.synthetic import generate_dataset

    folder.mkdir(parents=True, exist_ok=True)
    annotations = generate_dataset(folder / "gen", 3, 4, split="val")
    sources = sorted(annotations.parent.rglob("*.png"))[:3]
    paths = []
    for source, (name, hw) in zip(sources, (("square.png", (200, 200)), ("wide.png", (150, 300)),
                                            ("tall.png", (300, 150))), strict=True):
        Image.open(source).convert("RGB").resize((hw[1], hw[0]), Image.Resampling.BILINEAR).save(folder / name)
        paths.append(folder / name)
    return paths


def test_trt_infer_shrinks_or_refuses_what_does_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from retinanet_trt.cli import export as export_cli

    onnx_path = tmp_path / "small.onnx"
    # the demo (256 / 320) at a 256x320 input: 200x200 -> 256x256 fits, 150x300 -> 160x320 fits, 300x150 ->
    # 320x160 does not.
    assert export_cli.main(["--demo", "--input-size", "256", "320", "-o", str(onnx_path), "--quiet"]) == 0
    paths = _images(tmp_path / "in")
    assert infer_cli.main([str(onnx_path), *map(str, paths), "-o", str(tmp_path / "a"), "--no-draw",
                           "--min-score", "0"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "scaled down further" in ln]
    assert len(lines) == 1 and re.search(r"1 image\(s\) larger than the fixed 256x320 input", lines[0])
    assert "tall.png (300x150 -> 256x128)" in lines[0] and "wide.png" not in lines[0]
    marks = {Path(r["file_name"]).name: r["shrunk_to_fit"] for r in json.loads((tmp_path / "a" / "detections.json").read_text())}
    assert marks.get("tall.png") is True and marks.get("wide.png", False) is False
    # --oversize refuse: the tall image is skipped with the reason, the others still run.
    assert infer_cli.main([str(onnx_path), *map(str, paths), "-o", str(tmp_path / "b"), "--no-draw",
                           "--oversize", "refuse"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"skipped .*tall\.png: 320x160 after the model's resize, larger than the fixed network input "
                     r"256x320 \(preprocess.oversize 'refuse'\)", err)
    assert "scaled down further" not in err


def test_trt_eval_names_shrunk_images_and_still_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo (256 / 320 resize) exported at 192x256: its images do not fit at 256 and are shrunk."""
    from retinanet_trt.cli import export as export_cli

    onnx_path = tmp_path / "demo192.onnx"
    assert export_cli.main(["--demo", "--input-size", "192", "256", "-o", str(onnx_path), "--quiet"]) == 0
    report = tmp_path / "ap.json"
    assert eval_cli.main([str(onnx_path), "--demo", "--demo-images", "6", "--json", str(report), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"trt-eval: 6 image\(s\) larger than the fixed 192x256 input after the model's resize were "
                     r"scaled down further", err)
    stats = json.loads(report.read_text())
    assert len(stats["shrunk_to_fit"]) == 6 and stats["num_images"] == 6 and stats["AP50"] >= 0.0


def test_the_triton_preprocess_stage_applies_the_same_rule() -> None:
    from retinanet_trt.runtime.images import load_image
    from retinanet_trt.serve.stages import Limits, RequestError, preprocess_request

    spec = get_preset("tiny")  # 256 / 320
    limits = Limits(fixed_input_hw=(256, 320), max_input_hw=(256, 320))
    fits, tall = load_image(np.zeros((150, 300, 3), np.uint8)), load_image(np.zeros((300, 150, 3), np.uint8))
    images, meta = preprocess_request([fits, tall], spec, limits)
    assert images.shape == (2, 3, 256, 320)
    assert meta.tolist() == [[150, 300, 160, 320, 256, 320], [300, 150, 256, 128, 256, 320]]
    spec.preprocess.oversize = "refuse"
    with pytest.raises(RequestError, match="larger than the fixed network input 256x320"):
        preprocess_request([tall], spec, limits)


def test_a_dynamic_engine_s_largest_input_is_its_largest_profile_max() -> None:
    """TrtBackend.max_input_hw: the max H x W of the profile with the largest one (what
    serve/model_info.profile_limits picks), in either input layout."""
    from retinanet_trt.runtime.backends.trt_backend import TrtBackend

    backend = TrtBackend.__new__(TrtBackend)  # the profile arithmetic only: no engine, no GPU
    backend.input_format = "float32_nchw"
    backend.ranges = [((1, 3, 128, 128), (1, 3, 512, 512), (4, 3, 640, 928)),
                      ((1, 3, 128, 128), (1, 3, 800, 800), (2, 3, 1344, 800))]
    assert backend._max_hw() == (1344, 800)
    backend.input_format = "uint8_nhwc"
    backend.ranges = [((1, 128, 128, 4), (1, 512, 512, 4), (4, 800, 1344, 4))]
    assert backend._max_hw() == (800, 1344)
