"""trt-serve deepstream: every key of config_infer_primary.txt is one of DeepStream's documented
nvinfer keys (tests/data/deepstream_nvinfer_keys.txt, with its source), the values follow the spec,
and nvinfer's pre-process formula reproduces the spec's normalisation. DeepStream itself is not run
here (no DeepStream on these machines)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import fake_engine

from retinanet_trt.runtime.preprocess import normalize
from retinanet_trt.serve.deepstream import (
    EFFICIENTNMS_PARSER,
    detections_from_tensor_meta,
    letterbox_meta,
    preprocess_keys,
    read_config_keys,
    write_deepstream,
)
from retinanet_trt.spec import ModelSpec
from retinanet_trt.spec.presets import get_preset

BIN = Path(sys.executable).parent
KEYS = Path(__file__).with_name("data") / "deepstream_nvinfer_keys.txt"


def _documented() -> dict[str, set[str]]:
    groups: dict[str, set[str]] = {}
    current = None
    for line in KEYS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("["):
            current = groups.setdefault(line.strip("[]"), set())
        else:
            assert current is not None
            current.add(line.strip())
    return groups


def _check_keys(config: Path) -> dict[str, dict[str, str]]:
    documented = _documented()
    groups = read_config_keys(config.read_text())
    assert set(groups) <= {"property", "class-attrs-all"}
    assert set(groups["property"]) <= documented["property"], set(groups["property"]) - documented["property"]
    assert set(groups["class-attrs-all"]) <= documented["class-attrs"]
    return groups


def test_raw_onnx_config_uses_tensor_meta_and_the_spec(tiny_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    onnx_path, spec = tiny_onnx
    proc = subprocess.run([str(BIN / "trt-serve"), "deepstream", str(onnx_path), "-o", str(tmp_path / "ds"),
                           "--batch-size", "4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    groups = _check_keys(tmp_path / "ds" / "config_infer_primary.txt")
    prop = groups["property"]
    assert prop["onnx-file"] == onnx_path.name and (tmp_path / "ds" / onnx_path.name).is_file()
    assert prop["batch-size"] == "4" and prop["network-mode"] == "0"  # fp32
    assert prop["model-color-format"] == "0" and prop["maintain-aspect-ratio"] == "1"  # RGB, shortest_edge
    assert prop["num-detected-classes"] == str(spec.head.num_classes)
    assert prop["output-tensor-meta"] == "1" and prop["network-type"] == "100" and prop["cluster-mode"] == "4"
    assert prop["infer-dims"] == "3;256;320"  # min_size / max_size of the tiny spec, padded to 32
    assert (tmp_path / "ds" / "labels.txt").read_text().split() == spec.class_names()
    assert (tmp_path / "ds" / "deepstream_probe.py").is_file() and (tmp_path / "ds" / "spec.json").is_file()
    attrs = groups["class-attrs-all"]
    assert float(attrs["nms-iou-threshold"]) == spec.postprocess.nms_iou and attrs["topk"] == "100"


def test_end2end_engine_config_uses_the_efficientnms_parser(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, end2end=True, precision="int8")
    report = write_deepstream(engine, tmp_path / "ds")
    prop = _check_keys(tmp_path / "ds" / "config_infer_primary.txt")["property"]
    assert prop["model-engine-file"] == engine.name and "onnx-file" not in prop
    assert prop["network-mode"] == "1" and prop["parse-bbox-func-name"] == EFFICIENTNMS_PARSER
    assert prop["output-blob-names"] == "num_dets;boxes;scores;labels" and prop["network-type"] == "0"
    assert not (tmp_path / "ds" / "deepstream_probe.py").exists() and report["end2end"]


def test_nvinfer_formula_reproduces_the_spec_normalisation() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    for name, tolerance in (("retinanet_r50_fpn", 1e-4), ("tiny", 0.02)):
        spec = get_preset(name)
        keys, notes = preprocess_keys(spec)
        order = [2, 1, 0] if keys["model-color-format"] == 1 else [0, 1, 2]
        x = pixels[:, :, order].astype(np.float64).transpose(2, 0, 1)
        offsets = np.array([float(v) for v in keys["offsets"].split(";")])[:, None, None]
        y = float(keys["net-scale-factor"]) * (x - offsets)
        ours = normalize(pixels, spec.preprocess)
        rel = np.abs(y - ours).max() / np.abs(ours).max()
        assert rel <= tolerance, (name, rel)
        assert notes["max_relative_scale_error"] <= tolerance


def test_tensor_meta_detections_map_to_frame_pixels(tiny_onnx) -> None:  # type: ignore[no-untyped-def]
    """What the pyds probe computes: raw maps of the letterboxed frame -> boxes in frame pixels."""
    from retinanet_trt.runtime.backends.ort_backend import OrtBackend

    onnx_path, spec = tiny_onnx
    spec = ModelSpec.from_dict({**spec.to_dict(), "postprocess": {**spec.to_dict()["postprocess"], "score_thresh": [0.005] * 5}})
    meta = letterbox_meta((1080, 1920), (256, 320))
    assert meta.resized_hw == (180, 320) and meta.input_hw == (256, 320)
    x = np.zeros((1, 3, 256, 320), np.float32)
    x[:, :, :180] = np.random.default_rng(1).normal(size=(1, 3, 180, 320))
    outputs = OrtBackend(onnx_path).run(x)
    dets = detections_from_tensor_meta({k: v[0] for k, v in outputs.items()}, spec, (1080, 1920), (256, 320))
    assert len(dets) > 0
    assert dets.boxes[:, [0, 2]].max() <= 1920 and dets.boxes[:, [1, 3]].max() <= 1080


@pytest.mark.parametrize("args, message", [(["--batch-size", "0"], "--batch-size 0"), ([], "not found")])
def test_bad_deepstream_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    model = tmp_path / "missing.onnx"
    if args:
        model.write_bytes(b"")
    proc = subprocess.run([str(BIN / "trt-serve"), "deepstream", str(model), "-o", str(tmp_path / "ds"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
