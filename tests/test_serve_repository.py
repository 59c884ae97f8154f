"""trt-serve export: every config.pbtxt parses against Triton's own schema (tritonclient's
model_config_pb2), for tensorrt_plan, onnxruntime_onnx, python and end-to-end repositories; the
python stages compute trt-infer's detections in-process; bad input is one line, exit 2."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from serve_helpers import fake_engine

from retinanet_trt.errors import UsageError
from retinanet_trt.runtime.detector import Detector
from retinanet_trt.runtime.images import load_image
from retinanet_trt.serve import stages
from retinanet_trt.serve.benchmark import set_dynamic_batching
from retinanet_trt.serve.pbtxt import check_config
from retinanet_trt.serve.readme import triton_container
from retinanet_trt.serve.repository import MARKER, ServeOptions, export_repository
from retinanet_trt.spec import ModelSpec
from retinanet_trt.spec.presets import get_preset

BIN = Path(sys.executable).parent


def _configs(repo: Path) -> dict[str, Any]:
    return {c.parent.name: check_config(c.read_text(), str(c)) for c in sorted(repo.glob("*/config.pbtxt"))}


def test_tensorrt_plan_repository_parses_and_takes_the_engine_profile_limits(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path)
    record = export_repository(engine, tmp_path / "repo", ServeOptions(name="det", max_batch=16, instances=2, gpus=[0, 1],
                                                                        dynamic_batching=True, max_queue_delay_us=500))
    configs = _configs(tmp_path / "repo")
    assert set(configs) == {"det", "det_preprocess", "det_network", "det_postprocess"}
    net = configs["det_network"]
    assert net.platform == "tensorrt_plan" and net.max_batch_size == 4  # the profile's largest batch, not 16
    assert net.dynamic_batching.max_queue_delay_microseconds == 500
    assert net.instance_group[0].count == 2 and net.instance_group[0].kind == 1  # KIND_GPU
    assert list(net.instance_group[0].gpus) == [0, 1]
    assert list(net.input[0].dims) == [3, -1, -1] and len(net.output) == 10
    assert (tmp_path / "repo" / "det_network" / "1" / "model.plan").read_bytes() == engine.read_bytes()
    pre = {p: v.string_value for p, v in configs["det_preprocess"].parameters.items()}
    assert pre["min_input_hw"] == "128x128" and pre["max_input_hw"] == "320x352"
    ens = configs["det"]
    assert ens.platform == "ensemble" and ens.max_batch_size == 4
    assert [s.model_name for s in ens.ensemble_scheduling.step] == ["det_preprocess", "det_network", "det_postprocess"]
    assert all(i.optional for i in ens.input) and [i.name for i in ens.input] == ["IMAGE_BYTES", "IMAGE"]
    assert [o.name for o in ens.output] == list(stages.OUTPUTS)
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert "nvcr.io/nvidia/tritonserver:24.08-py3" in readme and "10.3.0.26" in readme
    assert "EXECUTION_ENV_PATH" in readme and "FROM nvcr.io" in readme
    assert (tmp_path / "repo" / "labels.txt").read_text().split() == get_preset("tiny").class_names()
    assert record["tensorrt_version"] == "10.3.0.26"


def test_end2end_engine_gets_a_rescale_model_and_a_scalar_reshape(tmp_path: Path) -> None:
    export_repository(fake_engine(tmp_path, end2end=True), tmp_path / "r", ServeOptions())
    configs = _configs(tmp_path / "r")
    assert "retinanet_rescale" in configs and "retinanet_postprocess" not in configs
    num = next(o for o in configs["retinanet_network"].output if o.name == "num_dets")
    assert list(num.dims) == [1] and list(num.reshape.shape) == []
    rescale = {k: v.string_value for k, v in configs["retinanet_rescale"].parameters.items()}
    assert rescale["stage"] == "rescale"


def test_onnx_repositories_parse(tiny_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    onnx_path, _ = tiny_onnx
    export_repository(onnx_path, tmp_path / "ort", ServeOptions(ort_tensorrt=True))
    ort = _configs(tmp_path / "ort")["retinanet_network"]
    assert ort.platform == "onnxruntime_onnx" and ort.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    assert ort.instance_group[0].kind == 1 and not ort.HasField("dynamic_batching")
    export_repository(onnx_path, tmp_path / "py", ServeOptions(platform="python", threads=1, dynamic_batching=True))
    py = _configs(tmp_path / "py")
    assert py["retinanet_network"].backend == "python" and py["retinanet_network"].instance_group[0].kind == 2  # CPU
    params = {k: v.string_value for k, v in py["retinanet_network"].parameters.items()}
    assert params == {"stage": "network", "backend": "ort-cpu", "network_input": "images", "model_file": "model.onnx",
                      "threads": "1"}
    for model in ("retinanet_preprocess", "retinanet_network", "retinanet_postprocess"):
        assert (tmp_path / "py" / model / "1" / "model.py").is_file() and (tmp_path / "py" / model / "1" / "spec.json").is_file()
    assert "no TensorRT engine" in (tmp_path / "py" / "README.md").read_text()


def test_end2end_conversion_of_a_raw_onnx(tiny_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    record = export_repository(tiny_onnx[0], tmp_path / "e2e", ServeOptions(platform="onnxruntime_onnx", end2end=True))
    assert record["end2end"] and record["convert_end2end"]
    configs = _configs(tmp_path / "e2e")
    assert {o.name for o in configs["retinanet_network"].output} == {"num_dets", "boxes", "scores", "labels"}
    assert [s.model_name for s in configs["retinanet"].ensemble_scheduling.step][-1] == "retinanet_rescale"


def test_dynamic_batching_toggle_keeps_a_valid_config(tiny_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    export_repository(tiny_onnx[0], tmp_path / "r", ServeOptions(platform="python", dynamic_batching=True))
    text = (tmp_path / "r" / "retinanet_network" / "config.pbtxt").read_text()
    off = check_config(set_dynamic_batching(text, False))
    on = check_config(set_dynamic_batching(set_dynamic_batching(text, False), True, 250))
    assert not off.HasField("dynamic_batching") and on.dynamic_batching.max_queue_delay_microseconds == 250
    assert len(off.parameters) == len(on.parameters) == 5


def test_reexport_replaces_and_a_failed_export_leaves_nothing(tiny_onnx, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "r"
    export_repository(tiny_onnx[0], repo, ServeOptions(name="a"))
    export_repository(tiny_onnx[0], repo, ServeOptions(name="b"))
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["b", "b_network", "b_postprocess", "b_preprocess"]
    from retinanet_trt.serve import repository

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(repository, "write_json_atomic", boom)
    with pytest.raises(OSError):
        export_repository(tiny_onnx[0], repo, ServeOptions(name="c"))
    assert (repo / "b").is_dir() and not (repo / "c").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no staging folder left behind


@pytest.mark.parametrize("args, message", [
    (["--name", "bad name"], "--name"),
    (["--platform", "tensorrt_plan"], "needs a TensorRT engine"),
    (["--max-batch", "0"], "--max-batch 0"),
    (["--backend", "trt", "--platform", "python"], "runs an engine"),
    (["--platform", "python", "--gpus", "0"], "runs on the CPU"),
])
def test_bad_export_options_are_one_line(tiny_onnx, tmp_path: Path, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run([str(BIN / "trt-serve"), "export", str(tiny_onnx[0]), "-o", str(tmp_path / "r"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_export_never_replaces_its_input_or_a_foreign_folder(tiny_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "models"
    folder.mkdir()
    model = folder / "m.onnx"
    model.write_bytes(Path(tiny_onnx[0]).read_bytes())
    with pytest.raises(UsageError, match="holds the model"):
        export_repository(model, folder, ServeOptions())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a trt-serve repository"):
        export_repository(model, tmp_path / "other", ServeOptions())
    assert model.read_bytes() == Path(tiny_onnx[0]).read_bytes() and (tmp_path / "other" / "notes.txt").is_file()
    assert not (tmp_path / MARKER).exists()


def test_triton_container_for_tensorrt_versions() -> None:
    assert triton_container("10.3.0.26")[0] == "nvcr.io/nvidia/tritonserver:24.08-py3"
    image, note = triton_container("11.4.0.106")
    assert image is None and "11.4" in note and "rebuild" in note


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_stages_compute_trt_infers_detections(tiny_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The python models' arithmetic, run here: decode -> preprocess -> ORT -> postprocess equals the
    Detector (trt-infer) on the same image file."""
    onnx_path, spec = tiny_onnx
    spec = ModelSpec.from_dict({**spec.to_dict(), "postprocess": {**spec.to_dict()["postprocess"], "score_thresh": [0.005] * 5}})
    pixels = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    (tmp_path / "x.png").write_bytes(_png(pixels))
    detector = Detector.load(onnx_path, "ort-cpu")
    detector.spec = spec  # random weights score ~0.01: a lower threshold gives detections to compare
    reference = detector(str(tmp_path / "x.png"), score_threshold=None)
    images = stages.decode_request(np.array([[_png(pixels)]], dtype=object), None, stages.Limits())
    batch, meta = stages.preprocess_request(images, spec, stages.Limits())
    outputs = stages.postprocess_request(detector.backend.run(batch), meta, spec)
    got = stages.outputs_to_detections(outputs)[0]
    assert len(got) == len(reference) > 0
    np.testing.assert_array_equal(got.boxes, reference.boxes)
    np.testing.assert_array_equal(got.scores, reference.scores)
    assert got.names == reference.names and got.labels.tolist() == reference.labels.tolist()


@pytest.mark.parametrize("encoded, pixels, message", [
    (None, None, "not neither"),
    (np.array([[b"x"]], dtype=object), np.zeros((1, 8, 8, 3), np.uint8), "not both"),
    (np.zeros((0, 1), dtype=object), None, "empty batch"),
    (np.array([[b"GIF89a broken"]], dtype=object), None, "IMAGE_BYTES[0]: cannot read image"),
    (np.array([[b""]], dtype=object), None, "empty (0 bytes)"),
    (None, np.zeros((1, 8, 8, 4), np.uint8), "(B, H, W, 3)"),
    (None, np.zeros((1, 8, 8, 3), np.float32), "must be uint8"),
    (None, np.zeros((1, 3000, 2000, 3), np.uint8), "more than the limit of 1000000 pixels"),
    (np.array([[_png(np.zeros((1500, 1000, 3), np.uint8))]], dtype=object), None, "1000x1500 pixels, more than the limit"),
])
def test_bad_requests_name_the_problem(encoded: Any, pixels: Any, message: str) -> None:
    with pytest.raises(stages.RequestError) as info:
        stages.decode_request(encoded, pixels, stages.Limits(max_image_pixels=1_000_000))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_network_limits_are_checked_before_the_network() -> None:
    spec = get_preset("tiny")
    image = load_image(np.zeros((256, 320, 3), np.uint8))
    # larger than the profile's largest: scaled down further to fit (oversize 'shrink'), or refused
    images, meta = stages.preprocess_request([image], spec, stages.Limits(max_input_hw=(128, 128)))
    assert images.shape[-2:] == (128, 128) and meta.tolist() == [[256, 320, 102, 128, 128, 128]]
    spec.preprocess.oversize = "refuse"
    with pytest.raises(stages.RequestError, match="larger than the network's largest input 128x128"):
        stages.preprocess_request([image], spec, stages.Limits(max_input_hw=(128, 128)))
    spec.preprocess.oversize = "shrink"
    with pytest.raises(stages.RequestError, match="smaller than the network's smallest 512x512"):
        stages.preprocess_request([image], spec, stages.Limits(min_input_hw=(512, 512)))
    _, meta = stages.preprocess_request([image], spec, stages.Limits())
    assert meta.tolist() == [[256, 320, 256, 320, 256, 320]]


def test_padded_outputs_round_trip() -> None:
    from retinanet_trt.runtime.types import Detections

    dets = [Detections(np.ones((2, 4), np.float32), np.array([0.9, 0.5], np.float32), np.array([3, 1]), ["a", "b"]),
            Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), [])]
    out = stages.detections_to_outputs(dets)
    assert out["BOXES"].shape == (2, 2, 4) and out["NUM_DETS"].tolist() == [[2], [0]] and out["LABELS"][1].tolist() == [-1, -1]
    back = stages.outputs_to_detections(out)
    assert back[0].names == ["a", "b"] and len(back[1]) == 0 and back[0].labels.tolist() == [3, 1]


def test_python_network_on_an_engine_carries_its_sidecar(tmp_path: Path) -> None:
    engine = fake_engine(tmp_path)
    export_repository(engine, tmp_path / "r", ServeOptions(platform="python"))
    net = _configs(tmp_path / "r")["retinanet_network"]
    params = {k: v.string_value for k, v in net.parameters.items()}
    assert net.backend == "python" and params["backend"] == "trt" and params["model_file"] == "model.engine"
    assert net.instance_group[0].kind == 1  # KIND_GPU: TensorRT
    folder = tmp_path / "r" / "retinanet_network" / "1"
    assert (folder / "model.engine").read_bytes() == engine.read_bytes() and (folder / "model.engine.json").is_file()
