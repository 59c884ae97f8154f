"""The bundled demo model meets its accuracy bar on a fresh split, with torch and ONNX Runtime
agreeing; and the README's main job runs end to end."""

from __future__ import annotations

import json

from retinanet_trt.cli import demo as demo_cli
from retinanet_trt.demo import load_demo
from retinanet_trt.demo.synthetic import generate_dataset
from retinanet_trt.export.pipeline import ExportOptions, export_onnx
from retinanet_trt.model.torch_backend import TorchBackend
from retinanet_trt.runtime.backends.ort_backend import OrtBackend
from retinanet_trt.runtime.detector import Detector
from retinanet_trt.scoring.evaluate import evaluate


def test_bundled_model_map_on_fresh_val_split_with_torch_and_onnxruntime(tmp_path) -> None:
    # A seed the training never saw (training draws its own "train" split; its val check used seed 2024).
    annotations = generate_dataset(tmp_path / "data", 200, seed=11, split="val")
    spec, model = load_demo()
    onnx_path = tmp_path / "demo.onnx"
    export_onnx(model, spec, onnx_path, ExportOptions(input_hw=(256, 320), dynamic=True))
    ap = {
        name: evaluate(det, annotations.parent, annotations, progress=False)["AP"]
        for name, det in {"torch": Detector(TorchBackend(model, spec)),
                          "ort": Detector(OrtBackend(onnx_path, "ort-cpu"))}.items()
    }
    assert ap["torch"] >= 0.5 and ap["ort"] >= 0.5, ap
    assert abs(ap["torch"] - ap["ort"]) <= 0.002, ap


def test_main_job_runs_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert demo_cli.main(["--out", str(out), "--val-images", "6", "--skip-precision"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["export"]["passed"] and report["export"]["worst_max_rel"] <= 1e-4
    assert set(report["map"]) == {"torch", "ort-cpu"}
    assert report["map_torch_vs_ort_abs_diff"] <= 0.002
    assert (out / "infer" / "detections.json").is_file() and list((out / "infer").glob("*.png"))
