"""trt-serve refuses bad targets, unwritable outputs and contradictory flags with one line (exit 2;
exit 1 when no server answers at HOST:PORT), fast, and writes nothing."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from retinanet_trt.cli.serve import main


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from retinanet_trt.cli.export import main as export_main

    path = tmp_path_factory.mktemp("serve_bad") / "demo.onnx"
    assert export_main(["--demo", "-o", str(path), "--quiet"]) == 0
    return path


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trt-serve: error: "), lines
    return lines[0]


# ------------------------------------------------------------------------------------------ bench
@pytest.mark.parametrize("target", ["nonexist", "nonexist/", "host:99999", "host:port", "a/b:80"])
def test_bench_target_neither_repository_nor_host_port(tmp_path: Path, target: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.perf_counter()
    assert main(["bench", target, "-o", str(tmp_path / "b.json")]) == 2
    assert "neither a trt-serve repository folder nor a server's HOST:PORT" in _one_line(capsys)
    assert time.perf_counter() - t0 < 5 and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason="tritonclient is not installed")
@pytest.mark.parametrize("protocols", ["http", "grpc"])
def test_bench_closed_port_is_an_environment_fault(tmp_path: Path, protocols: str, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from retinanet_trt.serve import benchmark

    assert benchmark.URL_READY_TIMEOUT_S <= 10  # a running server answers at once
    monkeypatch.setattr(benchmark, "URL_READY_TIMEOUT_S", 1.0)  # the same path, sooner
    t0 = time.perf_counter()
    assert main(["bench", "127.0.0.1:1", "--grpc-url", "127.0.0.1:1", "--protocols", protocols, "--requests", "2",
                 "--concurrency", "1", "-o", str(tmp_path / "b.json")]) == 1
    line = _one_line(capsys)
    assert "no Triton server answers at 127.0.0.1:1" in line and f"({protocols})" in line and "start one" in line
    assert time.perf_counter() - t0 < 8 and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def repository(demo_onnx: Path) -> Path:
    from retinanet_trt.serve.repository import ServeOptions, export_repository

    repo = demo_onnx.parent / "repo"
    export_repository(demo_onnx, repo, ServeOptions(platform="python"))
    return repo


@pytest.mark.parametrize(("target", "args", "message"), [
    ("127.0.0.1:8000", ["--batching", "on"], "drop --batching"),
    ("127.0.0.1:8000", ["--grpc-url", "nohost"], "--grpc-url 'nohost'"),
    ("127.0.0.1:8000", ["--concurrency", "100000"], "--concurrency '100000'"),
    ("127.0.0.1:8000", ["--requests", "0"], "--requests 0"),
    ("127.0.0.1:8000", ["--rounds", "1000000"], "--rounds 1000000"),
    ("REPO", ["--model", "x"], "--model and --grpc-url"),
    ("REPO", ["--batching", "sometimes"], "--batching 'sometimes'"),
])
def test_bench_flags_that_do_not_apply(repository: Path, tmp_path: Path, target: str, args: list[str], message: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    target = str(repository) if target == "REPO" else target
    assert main(["bench", target, *args, "-o", str(tmp_path / "b.json")]) == 2
    assert message in _one_line(capsys)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ unwritable outputs
@pytest.mark.parametrize("out", ["/proc/ds", "/proc/x/y"])
def test_deepstream_unwritable_output(demo_onnx: Path, out: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deepstream", str(demo_onnx), "-o", out]) == 2
    line = _one_line(capsys)
    assert "cannot write in /proc" in line and "choose another path" in line
    assert not Path(out).exists()


def test_deepstream_output_that_is_a_file(demo_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("keep")
    assert main(["deepstream", str(demo_onnx), "-o", str(tmp_path / "f" / "ds")]) == 2
    assert "is a file, not a folder" in _one_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["f"] and (tmp_path / "f").read_text() == "keep"


@pytest.mark.parametrize(("args", "message"), [
    (["--log", "/proc/triton.log"], "cannot write in /proc"),
    (["--ready-timeout", "nan"], "--ready-timeout nan"),
    (["--ready-timeout", "0"], "--ready-timeout 0"),
    (["--http-port", "1", "--grpc-port", "2", "--metrics-port", "70000"], "give ports 1..65535"),
])
def test_run_checks_its_flags_before_starting(repository: Path, args: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(repository), *args]) == 2
    assert message in _one_line(capsys)


# ---------------------------------------------------------------------------- export contradictions
@pytest.mark.parametrize(("args", "message"), [
    (["--ort-tensorrt", "--platform", "python"], "--ort-tensorrt applies to the onnxruntime_onnx platform only"),
    (["--backend", "ort-cuda"], "add --platform python"),
    (["--threads", "2"], "--threads 2 sets ONNX Runtime threads of a python network"),
    (["--device", "cpu", "--ort-tensorrt"], "--device cpu: --ort-tensorrt runs on a GPU"),
    (["--device", "cpu", "--platform", "python", "--backend", "ort-cuda"], "--device cpu: --backend ort-cuda"),
    (["--device", "gpu", "--platform", "python"], "--device gpu: --backend ort-cpu runs on the CPU"),
])
def test_export_contradictions(demo_onnx: Path, tmp_path: Path, args: list[str], message: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(demo_onnx), "-o", str(tmp_path / "repo"), *args]) == 2
    assert message in _one_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["--ort-tensorrt"], ["--platform", "python", "--threads", "2"], ["--device", "cpu"],
                                  ["--platform", "python", "--backend", "ort-trt", "--threads", "1"]])
def test_export_valid_combinations_still_work(demo_onnx: Path, tmp_path: Path, args: list[str]) -> None:
    assert main(["export", str(demo_onnx), "-o", str(tmp_path / "repo"), *args]) == 0
    assert (tmp_path / "repo" / "retinanet_trt_repository.json").is_file()
