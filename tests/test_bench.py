"""trt-bench: per-level split adds up to compute, report keys, ratios, PNG, one-line errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import helper

from retinanet_trt.bench import (
    PER_LEVEL_TOLERANCE,
    TrtLevelProfiler,
    central_mean,
    ort_node_groups,
    ort_profile_runs,
)
from retinanet_trt.cli.bench import main

# 512x640 and one thread: runs long enough (tens of ms) that the scheduling noise of a busy
# 2-core machine averages out within each run, so the per-level check measures the method.
HW = (512, 640)


@pytest.fixture(scope="module")
def tiny512(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static tiny-preset ONNX exported as `trt-export --random-init --seed 0` would (seed in its info)."""
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx
    from retinanet_trt.model import build_model
    from retinanet_trt.spec.presets import get_preset

    spec = get_preset("tiny")
    path = tmp_path_factory.mktemp("bench") / "tiny.onnx"
    export_onnx(build_model(spec, seed=0), spec, path, ExportOptions(input_hw=HW, info={"random_init_seed": 0}))
    return path


@pytest.fixture(scope="module")
def compared(tiny512: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    """One `--compare torch,ort-cpu` run shared by the checks below: (report, png, stdout)."""
    out = tmp_path_factory.mktemp("bench_out")
    js, png = out / "bench.json", out / "bench.png"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main([str(tiny512), "--compare", "torch,ort-cpu", "--warmup", "2", "--iterations", "20",
                   "--threads", "1", "--json", str(js), "--plot", str(png)])
    assert rc == 0
    return json.loads(js.read_text()), png, buf.getvalue()


def _sum_over_compute(result: dict) -> float:
    return sum(result["per_level_ms"].values()) / result["compute_ms"]


def test_per_level_sums_within_tolerance_of_compute(compared: tuple[dict, Path, str], tiny512: Path,
                                                     tmp_path: Path) -> None:
    """Profiled per-level times add up to the un-profiled compute median within 10%.

    Other jobs share the machine's two cores, and a burst of theirs can shift one median by more
    than that in a 20-run sample; a backend outside the bound gets one fresh run of its own, and
    must pass there. A wrong attribution or a profiler overhead would fail both.
    """
    report, _, _ = compared
    for name in ("ort-cpu", "torch"):
        r = report["results"][name]
        assert r["per_level_check"]["profiled_runs"] == 20
        assert r["per_level_check"]["within_tolerance"] == (abs(_sum_over_compute(r) - 1) <= PER_LEVEL_TOLERANCE)
        if not r["per_level_check"]["within_tolerance"]:
            js = tmp_path / f"{name}.json"
            assert main([str(tiny512), "--backend", name, "--warmup", "2", "--iterations", "20", "--threads", "1",
                         "--json", str(js)]) == 0
            r = json.loads(js.read_text())["results"][name]
        assert abs(_sum_over_compute(r) - 1.0) <= PER_LEVEL_TOLERANCE, (name, r["per_level_check"])


def test_ort_nodes_all_attributed(compared: tuple[dict, Path, str]) -> None:
    """Every node ORT ran maps back to backbone, FPN or a level (nothing lost in 'other')."""
    levels = compared[0]["results"]["ort-cpu"]["per_level_ms"]
    assert levels["other"] == 0.0
    assert all(levels[g] > 0 for g in ("backbone", "fpn", "p3", "p4", "p5", "p6", "p7"))
    assert levels["p3"] > levels["p7"]  # 256x the positions


def test_report_keys(compared: tuple[dict, Path, str]) -> None:
    report, _, _ = compared
    assert report["backends"] == ["torch", "ort-cpu"]
    assert report["protocol"]["input_hw"] == list(HW)
    assert {"warmup", "iterations", "threads", "profile_runs"} <= set(report["protocol"])
    assert {"python", "numpy", "torch", "onnxruntime", "onnx", "tensorrt", "cpu", "gpu"} <= set(report["versions"])
    for r in report["results"].values():
        assert set(r["stages_ms"]) == {"preprocess", "h2d", "compute", "d2h", "postprocess", "end_to_end"}
        assert {"median", "p90", "p99"} <= set(r["stages_ms"]["compute"])
        assert r["compute_ms"] == r["stages_ms"]["compute"]["median"]
        assert list(r["per_level_ms"]) == ["backbone", "fpn", "p3", "p4", "p5", "p6", "p7", "other"]
        assert {"total", "p3", "p4", "p5", "p6", "p7", "nms"} <= set(r["postprocess_ms"])
        assert r["throughput_ips"] > 0


def test_compare_ratio_and_same_outputs(compared: tuple[dict, Path, str]) -> None:
    report, _, stdout = compared
    ort = report["results"]["ort-cpu"]
    ratio = ort["ratio_vs_first"]["compute"]
    assert ratio["time_ratio"] == pytest.approx(ort["compute_ms"] / report["results"]["torch"]["compute_ms"])
    assert ratio["speedup"] == pytest.approx(1 / ratio["time_ratio"])
    assert ort["max_abs_diff_vs_first"] < 1e-3  # torch rebuilt from the export seed: the same weights
    assert "ort-cpu vs torch" in stdout and "sum / compute" in stdout


def test_png_written(compared: tuple[dict, Path, str]) -> None:
    png = compared[1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_images_folder(tiny512: Path, tmp_path: Path) -> None:
    from PIL import Image

    for i, size in enumerate([(300, 200), (640, 480)]):
        Image.fromarray(np.full((size[1], size[0], 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    js = tmp_path / "r.json"
    assert main([str(tiny512), "--images", str(tmp_path), "--warmup", "0", "--iterations", "2",
                 "--profile-runs", "0", "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    assert report["protocol"]["images"].startswith("2 image(s)")
    assert report["results"]["ort-cpu"]["per_level_ms"] is None


@pytest.mark.parametrize(("args", "message"), [
    (["--backend", "yolo"], "unknown backend"),
    (["--compare", "ort-cpu,nope"], "unknown backend"),
    (["--backend", "trt"], "trt is unavailable here"),
    (["--backend", "ort-cuda"], "CUDAExecutionProvider"),
    (["--input-size", "256", "320"], "does not match the fixed input 512x640"),
    (["--input-size", "0", "640"], "between 1 and"),
    (["--iterations", "0"], "--iterations must be >= 1"),
    (["--compare", "ort-cpu,ort-cpu"], "twice"),
    (["--plot", "x.jpg"], ".png"),
])
def test_bad_inputs_exit_2(tiny512: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tiny512), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_missing_model_and_torch_without_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "none.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx
    from retinanet_trt.model import build_model
    from retinanet_trt.spec.presets import get_preset

    spec = get_preset("tiny")
    path = tmp_path / "noseed.onnx"
    export_onnx(build_model(spec, seed=1), spec, path, ExportOptions(input_hw=(128, 160)))
    assert main([str(path), "--backend", "torch"]) == 2
    assert "--torch-checkpoint" in capsys.readouterr().err


def test_dynamic_model_bad_size(tiny_onnx: tuple[Path, object], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tiny_onnx[0]), "--input-size", "250", "320"]) == 2
    assert "not divisible by 32" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- units
def test_ort_profile_runs_splits_by_model_run() -> None:
    events = [
        {"cat": "Session", "name": "model_run", "ts": 100, "dur": 50},
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 50},
        {"cat": "Node", "name": "a_kernel_time", "ts": 105, "dur": 10_000},
        {"cat": "Node", "name": "a_fence_before", "ts": 106, "dur": 1},
        {"cat": "Node", "name": "b_kernel_time", "ts": 120, "dur": 2_000},
        {"cat": "Node", "name": "a_kernel_time", "ts": 130, "dur": 1_000},
        {"cat": "Node", "name": "a_kernel_time", "ts": 210, "dur": 4_000},
        {"cat": "Node", "name": "x_kernel_time", "ts": 400, "dur": 9_000},  # outside every run
    ]
    assert ort_profile_runs(events) == [{"a": 11.0, "b": 2.0}, {"a": 4.0}]


def test_ort_node_groups_maps_renamed_nodes_back() -> None:
    """ORT names NCHWc nodes after an original tensor and reorders with a counter: both map back."""
    def model(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
        return helper.make_model(helper.make_graph(nodes, "g", [], []))

    original = model([
        helper.make_node("Conv", ["images"], ["/backbone/c_output_0"], name="backbone/stem/conv/Conv"),
        helper.make_node("Add", ["/backbone/c_output_0"], ["/fpn/a_output_0"], name="fpn/Add"),
        helper.make_node("Conv", ["/fpn/a_output_0"], ["cls_p3"], name="p3/cls_pred/Conv"),
    ])
    optimized = model([
        helper.make_node("Conv", ["images"], ["reorder_token_1"], name="/backbone/c_output_0_nchwc"),
        helper.make_node("Add", ["reorder_token_1"], ["reorder_token_2"], name="fpn/Add"),
        helper.make_node("Conv", ["reorder_token_2"], ["reorder_token_3"], name="cls_p3_nchwc"),
        helper.make_node("ReorderOutput", ["reorder_token_3"], ["cls_p3"], name="ReorderOutput_token_9"),
        helper.make_node("Concat", ["reorder_token_1", "reorder_token_3"], ["t"], name="Concat_token_5"),
    ])
    group = ort_node_groups(original, optimized)
    assert [group(n.name) for n in optimized.graph.node] == ["backbone", "fpn", "p3", "p3", "mixed"]
    names_only = ort_node_groups(original, None)
    assert names_only("/backbone/c_output_0_nchwc") == "backbone" and names_only("ReorderOutput_token_9") == "other"


def test_central_mean_adds_up_and_drops_spikes() -> None:
    runs = [{"a": 1.0, "b": 1.0}] * 5 + [{"a": 50.0, "b": 1.0}, {"a": 0.1, "b": 0.1}]
    means = central_mean(runs)
    assert means == {"a": 1.0, "b": 1.0}


def test_trt_profiler_rows_by_layer_name() -> None:
    """IProfiler rows (one list entry per execution) attributed by layer name; fused across parts -> mixed."""
    layers = {"backbone/stem/conv/Conv + backbone/stem/Relu": [], "p3/cls_pred/Conv": [],
              "fpn/output4/Conv + p4/cls_tower.0/conv/Conv": [], "Reformatting CopyNode for Input Tensor 0": []}

    class FakeBackend:
        last_times = SimpleNamespace(compute_ms=4.0)

        def attach_profiler(self) -> SimpleNamespace:
            return SimpleNamespace(ms=layers)

        def run(self, images: np.ndarray) -> None:
            for i, rows in enumerate(layers.values()):
                rows.append(float(i + 1))

    detector = SimpleNamespace(backend=FakeBackend())
    profiler = TrtLevelProfiler(detector, detector.backend.attach_profiler)  # type: ignore[arg-type]
    profiler.run(np.zeros(1), keep=False)
    profiler.run(np.zeros(1), keep=True)
    profile = profiler.finish()
    assert profile.runs == [{"backbone": 1.0, "p3": 2.0, "mixed": 3.0, "other": 4.0}]


def test_end_to_end_model_shows_in_graph_postprocess_as_its_own_row(tmp_path: Path) -> None:
    from retinanet_trt.cli.export import main as export_main

    model = tmp_path / "e2e.onnx"
    assert export_main(["--preset", "tiny", "--random-init", "--input-size", "128", "160", "--end2end",
                        "-o", str(model), "--quiet"]) == 0
    out = tmp_path / "b.json"
    assert main([str(model), "--backend", "ort-cpu", "--warmup", "1", "--iterations", "3", "--json", str(out)]) == 0
    levels = json.loads(out.read_text())["results"]["ort-cpu"]["per_level_ms"]
    assert levels["post"] > 0 and levels["backbone"] > 0
    assert levels.get("other", 0.0) < levels["post"]


def test_batch_counts_images_in_throughput_and_device_flags_are_checked(tiny_onnx, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    from retinanet_trt.cli import bench as bench_cli

    out = tmp_path / "b.json"
    assert bench_cli.main([str(tiny_onnx[0]), "--input-size", "64", "96", "--warmup", "1", "--iterations", "3",
                           "--profile-runs", "0", "--batch", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["protocol"]["batch"] == 3
    r = report["results"]["ort-cpu"]
    # Throughput counts images: 3 per timed inference.
    per_batch_s = r["stages_ms"]["end_to_end"]["mean"] / 1e3
    assert abs(r["throughput_ips"] - 3 / per_batch_s) / r["throughput_ips"] < 1e-6
    capsys.readouterr()
    for extra, message in ((["--device", "0"], "picks a GPU"), (["--cuda-graph"], "--backend trt"), (["--batch", "0"], "--batch 0")):
        assert bench_cli.main([str(tiny_onnx[0]), *extra]) == 2
        assert message in capsys.readouterr().err
