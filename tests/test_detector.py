"""The runner: torch and ONNX Runtime backends agree; trt-infer and trt-eval outputs and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retinanet_trt.cli import eval as eval_cli
from retinanet_trt.cli import infer as infer_cli
from retinanet_trt.export.pipeline import ExportOptions, export_onnx
from retinanet_trt.model import build_model
from retinanet_trt.model.torch_backend import TorchBackend
from retinanet_trt.runtime.backends.ort_backend import OrtBackend
from retinanet_trt.runtime.detector import Detector
from retinanet_trt.runtime.preprocess import preprocess
from retinanet_trt.spec.presets import get_preset


def _photos(n: int, seed: int = 0) -> list[np.ndarray]:
    """Real photos from scikit-image, cropped to different sizes."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = int(rng.integers(180, p.shape[0])), int(rng.integers(180, p.shape[1]))
        out.append(np.ascontiguousarray(p[:h, :w]))
    return out


def _assert_same_detections(a, b) -> None:  # type: ignore[no-untyped-def]
    """Same count; every detection of `a` has one in `b` with the same label, box within 1e-3 and
    score within 1e-5. Matched as sets: random weights give near-tied scores whose order can flip
    by float rounding between backends."""
    assert len(a) == len(b) > 0
    unused = np.ones(len(b), dtype=bool)
    for box, score, label in zip(a.boxes, a.scores, a.labels):
        close = unused & (b.labels == label) & (np.abs(b.boxes - box).max(axis=1) <= 1e-3) & (np.abs(b.scores - score) <= 1e-5)
        assert close.any(), f"no match for label {label} box {box} score {score}"
        unused[np.flatnonzero(close)[0]] = False


def _detectors(preset: str, input_hw, tmp_path, dynamic: bool, logit_shift: float):  # type: ignore[no-untyped-def]
    spec = get_preset(preset)
    model = build_model(spec, seed=0)
    with torch.no_grad():  # tiny random weights score every anchor near the 0.01 prior; let some pass 0.05
        model.head.cls_pred.bias += logit_shift
    path = tmp_path / f"{preset}.onnx"
    export_onnx(model, spec, path, ExportOptions(input_hw=input_hw, dynamic=dynamic))
    return Detector(TorchBackend(model, spec)), Detector(OrtBackend(path, "ort-cpu"))


def test_torch_and_onnxruntime_agree_on_tiny_dynamic(tmp_path) -> None:
    torch_det, ort_det = _detectors("tiny", (256, 320), tmp_path, dynamic=True, logit_shift=1.5)
    for image in _photos(3):
        _assert_same_detections(torch_det([image])[0], ort_det([image])[0])


def test_torch_and_onnxruntime_agree_on_r50_static(tmp_path) -> None:
    torch_det, ort_det = _detectors("retinanet_r50_fpn", (480, 640), tmp_path, dynamic=False, logit_shift=0.0)
    assert ort_det.fixed_input_hw == (480, 640)
    torch_det.backend.fixed_input_hw = (480, 640)  # same padded input as the static ONNX
    spec = ort_det.spec
    spec.preprocess.min_size, spec.preprocess.max_size = 480, 640  # the seed notes' rule: short 480, long <= 640
    torch_det.spec.preprocess.min_size, torch_det.spec.preprocess.max_size = 480, 640
    for image in _photos(2, seed=1):
        _assert_same_detections(torch_det([image])[0], ort_det([image])[0])


def test_batch_of_different_sizes_matches_one_by_one(tmp_path) -> None:
    _, ort_det = _detectors("tiny", (256, 320), tmp_path, dynamic=True, logit_shift=1.5)
    images = _photos(3, seed=2)
    batch = ort_det.prepare(images)
    assert len({m.original_hw for m in batch.metas}) == 3
    together = ort_det.detect_batch(batch)
    for image, dets in zip(images, together):
        # Alone, an image is padded to the batch's size so the network sees the same input.
        single = preprocess([image], ort_det.spec, input_hw=batch.images.shape[2:])
        _assert_same_detections(ort_det.detect_batch(single)[0], dets)


@pytest.fixture()
def image_folder(tmp_path):  # type: ignore[no-untyped-def]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, photo in enumerate(_photos(2)):
        Image.fromarray(photo).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def test_trt_infer_writes_coco_results_and_pngs_and_skips_bad_files(tiny_onnx, image_folder, tmp_path, capsys) -> None:
    path, _ = tiny_onnx
    out = tmp_path / "out"
    assert infer_cli.main([str(path), str(image_folder), "--out", str(out), "--min-score", "0"]) == 0
    err = capsys.readouterr().err
    assert "broken.png" in err
    results = json.loads((out / "detections.json").read_text())
    assert sorted(p.name for p in out.glob("*.png")) == ["img0.png.det.png", "img1.png.det.png"]
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score", "file_name", "annotated"}
        assert r["annotated"] == Path(r["file_name"]).name + ".det.png"
        assert r["bbox"][2] >= 0 and r["bbox"][3] >= 0 and 0 <= r["score"] <= 1


def test_trt_eval_json_has_fractions(tiny_onnx, tmp_path) -> None:
    path, _ = tiny_onnx
    out = tmp_path / "ap.json"
    assert eval_cli.main([str(path), "--demo", "--demo-images", "4", "--seed", "3", "--json", str(out)]) == 0
    stats = json.loads(out.read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert 0.0 <= stats[key] <= 1.0 or stats[key] == -1.0
    assert stats["num_images"] == 4 and stats["backend"] == "ort-cpu"


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.onnx", "--demo"], "not found"),
        (["{onnx}", "--demo", "--backend", "ort-cuda"], "CUDAExecutionProvider"),
        (["{onnx}"], "give either --demo"),
        (["{onnx}", "--images", "{tmp}"], "go together"),
        (["{onnx}", "--images", "{tmp}", "--annotations", "{tmp}/none.json"], "not found"),
    ],
)
def test_trt_eval_bad_input(tiny_onnx, tmp_path, capsys, args, message) -> None:  # type: ignore[no-untyped-def]
    path, _ = tiny_onnx
    argv = [a.format(onnx=path, tmp=tmp_path) for a in args]
    assert eval_cli.main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and message in err[0]


def test_trt_infer_without_images_is_a_usage_error(tiny_onnx, tmp_path, capsys) -> None:
    path, _ = tiny_onnx
    assert infer_cli.main([str(path), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err
