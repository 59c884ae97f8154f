"""TensorRT on a real GPU: engine build, backend, and the acceptance script.

Tests marked `gpu` are skipped, with the reason, where TensorRT or a GPU is missing (every CPU
machine and CI). The others check the acceptance script's parts that need no GPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from retinanet_trt.errors import UsageError
from retinanet_trt.tensorrt.engine import available

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_acceptance  # noqa: E402

TRT_OK, TRT_WHY = available()
needs_gpu = pytest.mark.skipif(not TRT_OK, reason=f"needs TensorRT and a GPU: {TRT_WHY}")

TRTEXEC_LINE = (
    "[11/25/2026-12:00:00] [I] GPU Compute Time: min = 1.2034 ms, max = 2.5 ms, mean = 1.31 ms, median = 1.3 ms, "
    "percentile(90%) = 1.4 ms, percentile(95%) = 1.45 ms, percentile(99%) = 1.6 ms"
)


# ---------------------------------------------------------------------------------------- no GPU needed
@pytest.mark.skipif(TRT_OK, reason="TensorRT is usable here")
def test_acceptance_script_says_why_it_cannot_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_acceptance.main(["--models", "demo"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "needs TensorRT and a GPU" in err


def test_trtexec_summary_is_parsed() -> None:
    stats = gpu_acceptance.parse_gpu_compute("noise\n" + TRTEXEC_LINE + "\n[I] Total Host Walltime: 3 s\n")
    assert stats == {"min": 1.2034, "max": 2.5, "mean": 1.31, "median": 1.3, "percentile(90%)": 1.4,
                     "percentile(95%)": 1.45, "percentile(99%)": 1.6}
    assert gpu_acceptance.parse_gpu_compute("no summary") is None


def test_plot_from_a_results_dict(tmp_path: Path) -> None:
    def latency(ms: float) -> dict:  # type: ignore[type-arg]
        return {"compute_ms": {"median": ms}}

    levels = [{"level": f"p{lv}", "cls_sqnr_db": 40.0 - lv, "box_sqnr_db": 45.0 - lv} for lv in range(3, 8)]
    engine = {"latency": {"ours": latency(2.0), "ours_cuda_graph": latency(1.8),
                          "trtexec_onnx": {"gpu_compute_ms": {"median": 1.7}}},
              "parity": {"vs_ort_fp32": {"levels": levels}}}
    results = {"gpu": {"name": "NVIDIA Test GPU"}, "tensorrt_version": "10.13.0.35",
               "models": {"demo": {"engines": {"fp16": engine, "int8": {"error": "x", "checks": {}}}}}}
    gpu_acceptance.plot(results, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@needs_gpu
def test_dynamic_engine_profiles_graph_and_sidecar(tiny_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two profiles, runs inside each, CUDA graph replay equal to plain runs, per-layer times, ORT parity."""
    from retinanet_trt.calib import accuracy
    from retinanet_trt.runtime.backends.trt_backend import TrtBackend
    from retinanet_trt.tensorrt.build import build_engine, layers_path, sidecar_path

    onnx_path, _ = tiny_onnx
    engine = tmp_path / "tiny.engine"
    small, large = ((1, 3, 64, 64), (1, 3, 128, 160), (2, 3, 128, 160)), ((1, 3, 192, 192), (1, 3, 256, 256), (1, 3, 320, 320))
    sidecar = build_engine(onnx_path, engine, shapes=[small, large], timing_cache=tmp_path / "t.cache")
    assert sidecar["precision"] == "fp32" and sidecar["strongly_typed"] and len(sidecar["profiles"]) == 2
    assert json.loads(sidecar_path(engine).read_text())["engine_bytes"] == engine.stat().st_size
    assert "Layers" in json.loads(layers_path(engine).read_text())
    assert (tmp_path / "t.cache").stat().st_size > 0

    session = accuracy.session(onnx_path)
    rng = np.random.default_rng(0)
    plain, graphed = TrtBackend(engine), TrtBackend(engine, cuda_graph=True)
    try:
        for shape in [(2, 3, 128, 160), (1, 3, 256, 256), (1, 3, 64, 96), (1, 3, 256, 256)]:
            x = rng.standard_normal(shape, dtype=np.float32)
            ours, replayed = plain.run(x), graphed.run(x)
            assert plain.last_times.compute_ms > 0 and plain.last_times.h2d_ms > 0
            cmp = accuracy.compare_runs(accuracy.run_all(session, [x]), [ours])
            assert accuracy.worst_sqnr(cmp) > 40, cmp  # TF32 convolutions, FP32 everywhere else
            for name, value in ours.items():  # same plan, same tactics: equal up to atomics' summation order
                np.testing.assert_allclose(value, replayed[name], rtol=1e-4, atol=1e-5)
        with pytest.raises(UsageError, match="outside the engine's shape ranges"):
            plain.run(np.zeros((1, 3, 512, 512), np.float32))
        times = plain.attach_profiler()
        plain.run(np.zeros((1, 3, 128, 160), np.float32))
        assert times.ms and all(v for v in times.ms.values())
    finally:
        plain.close()
        graphed.close()

    tampered = json.loads(sidecar_path(engine).read_text())
    tampered["tensorrt_version"] = "9.0.0"
    sidecar_path(engine).write_text(json.dumps(tampered))
    with pytest.raises(UsageError, match="was built with TensorRT 9.0.0"):
        TrtBackend(engine)


@pytest.mark.gpu
@needs_gpu
def test_cli_build_writes_engine_and_sidecar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from retinanet_trt.cli.build import main
    from retinanet_trt.cli.export import main as export_main

    onnx_path = tmp_path / "t.onnx"
    assert export_main(["--preset", "tiny", "--random-init", "--input-size", "128", "128", "-o", str(onnx_path), "--quiet"]) == 0
    assert main([str(onnx_path), "--fp16", "--builder-opt-level", "1", "--workspace", "1"]) == 0
    out = capsys.readouterr().out
    assert "t.fp16.engine" in out
    sidecar = json.loads((tmp_path / "t.fp16.engine.json").read_text())
    assert sidecar["precision"] == "fp16" and sidecar["spec"]["name"] == "tiny"
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.gpu
@needs_gpu
def test_acceptance_demo_model(tmp_path: Path) -> None:
    """The acceptance script on the demo model at all precisions, with shorter timing loops."""
    code = gpu_acceptance.main(["--models", "demo", "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path),
                                "--warmup", "10", "--iterations", "30"])
    (result,) = tmp_path.glob("gpu_acceptance_*.json")
    report = json.loads(result.read_text())
    failures = {p: e.get("error") or e["checks"] for p, e in report["models"]["demo"]["engines"].items()
                if "error" in e or not all(e["checks"].values())}
    assert code == 0 and report["passed"], failures
    assert result.with_suffix(".png").is_file()
