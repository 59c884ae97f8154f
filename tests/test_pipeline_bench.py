"""trt-bench --simulate-device: the simulated device sleeps, returns recorded outputs, is labelled a
simulation everywhere, and is refused for accuracy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from retinanet_trt.bench.simulated import SIMULATION_NOTE, SimulatedDevice, record_outputs
from retinanet_trt.cli import bench as bench_cli
from retinanet_trt.errors import UsageError
from retinanet_trt.runtime.detector import Detector


@pytest.fixture(scope="module")
def static_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from retinanet_trt.demo import load_demo
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx
    from retinanet_trt.export.uint8_input import uint8_input_file

    spec, model = load_demo()
    out = tmp_path_factory.mktemp("sim")
    export_onnx(model, spec, out / "f.onnx", ExportOptions(input_hw=(128, 160)))
    uint8_input_file(out / "f.onnx", out / "u8.onnx", check_full_model=False)
    return out / "f.onnx", out / "u8.onnx"


def test_the_simulated_device_sleeps_and_returns_the_recorded_outputs(static_pair) -> None:  # type: ignore[no-untyped-def]
    real = Detector.load(static_pair[0], "ort-cpu")
    image = np.full((100, 150, 3), 120, np.uint8)
    recorded, shape = record_outputs(real, image)
    sim = SimulatedDevice(real.spec, recorded, 20.0, input_shape=shape, input_format=real.input_format,
                          fixed_input_hw=real.fixed_input_hw)
    batch = real.prepare([image, image]).images
    t0 = time.perf_counter()
    out = sim.run(batch)
    assert time.perf_counter() - t0 >= 0.019 and sim.last_times.compute_ms >= 19.0
    assert all(out[k].shape == (2, *v.shape[1:]) and np.array_equal(out[k][1], v[0]) for k, v in recorded.items())
    det = Detector(sim)
    assert [d.scores.tobytes() for d in det([image])] == [d.scores.tobytes() for d in real([image])]
    with pytest.raises(UsageError, match="recorded outputs for input"):
        sim.run(np.zeros((1, 3, 64, 64), np.float32))
    from retinanet_trt.scoring.evaluate import evaluate

    with pytest.raises(UsageError, match="never measures accuracy"):
        evaluate(det, ".", "x.json")


def test_trt_bench_simulate_device_reports_steps_and_throughput_labelled_a_simulation(static_pair, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (90 + 10 * i, 140, 3), np.uint8)).save(photos / f"{i}.jpg")
    js = tmp_path / "sim.json"
    assert bench_cli.main([str(static_pair[0]), "--simulate-device", "1", "--uint8-model", str(static_pair[1]),
                           "--images", str(photos), "--iterations", "1", "--warmup", "0", "--workers", "2",
                           "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"*** {SIMULATION_NOTE} ***") and "SIMULATED" in out
    report = json.loads(js.read_text())
    assert report["simulation"] == SIMULATION_NOTE
    assert {s for s in report["host_steps"]["float"]["steps_ms"]} >= {"decode", "resize", "normalize_pad", "copy",
                                                                    "postprocess"}
    assert report["preprocess_ms"]["float_over_uint8"] > 0
    rows = report["throughput"]
    assert {(r["device_ms"], r["input"], r["overlap"]) for r in rows} == {
        (0.0, "float", "on"), (0.0, "uint8", "on"),  # the host steps alone: the measured host capacity
        (1.0, "float", "off"), (1.0, "float", "on"), (1.0, "uint8", "off"), (1.0, "uint8", "on")}
    for r in rows:
        assert r["device"].startswith("simulated") and r["images_per_s"]["median"] > 0
        assert r["bound_images_per_s"] == min(1000.0 if r["device_ms"] else r["host_bound"], r["host_bound"])
        assert r["bound_with_measured_host"] <= r["measured_host_capacity"]
    with pytest.raises(SystemExit):
        bench_cli.build_parser().parse_args([str(static_pair[0]), "--simulate-device"])
    assert bench_cli.main([str(static_pair[0]), "--workers", "2"]) == 2
    assert "--simulate-device" in capsys.readouterr().err
