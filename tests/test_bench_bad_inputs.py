"""trt-bench refuses out-of-range and contradictory flags with one line and exit 2, before any
work or progress line, and writes nothing (values that used to hang, run forever or trace back)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from retinanet_trt.cli.bench import main


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from retinanet_trt.cli.export import main as export_main

    path = tmp_path_factory.mktemp("bench_bad") / "demo.onnx"
    assert export_main(["--demo", "-o", str(path), "--quiet"]) == 0
    return path


def _refused(demo_onnx: Path, tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run trt-bench with a --json output; assert exit 2, one stderr line, nothing written; the line."""
    out = tmp_path / "bench.json"
    assert main([str(demo_onnx), *args, "--json", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trt-bench: error: "), lines
    assert captured.out == "" and list(tmp_path.iterdir()) == []
    return lines[0]


@pytest.mark.parametrize("threads", ["100000", "-1"])
def test_threads_out_of_range(demo_onnx: Path, tmp_path: Path, threads: str, capsys: pytest.CaptureFixture[str]) -> None:
    # --iterations 2 would also print the protocol note: the flag check comes first
    line = _refused(demo_onnx, tmp_path, ["--iterations", "2", "--threads", threads], capsys)
    assert f"--threads {threads}" in line and "cores" in line


@pytest.mark.parametrize("ms", ["nan", "inf", "1e9", "0", "-1"])
def test_simulate_device_needs_finite_milliseconds(demo_onnx: Path, tmp_path: Path, ms: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(demo_onnx, tmp_path, ["--simulate-device", "2", ms], capsys)
    assert "--simulate-device" in line and "10000" in line


@pytest.mark.parametrize(("flag", "value"), [
    ("--iterations", "999999999999"), ("--warmup", "100001"), ("--profile-runs", "100001"), ("--warmup", "-1"),
])
def test_counts_are_capped(demo_onnx: Path, tmp_path: Path, flag: str, value: str,
                           capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(demo_onnx, tmp_path, ["--iterations", "2", flag, value], capsys)
    assert flag in line and "100000" in line and value in line


@pytest.mark.parametrize(("args", "message"), [
    (["--workers", "100000"], "--workers 100000"),
    (["--iterations", "999999999999"], "--iterations"),
    (["--warmup", "100001"], "--warmup"),
    (["--threads", "2"], "drop"),
])
def test_simulate_device_flags_are_checked_before_any_work(demo_onnx: Path, tmp_path: Path, args: list[str],
                                                           message: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(demo_onnx, tmp_path, ["--simulate-device", "2", *args], capsys)
    assert message in line


@pytest.mark.parametrize(("args", "message"), [
    (["--torch-checkpoint", "X"], "--torch-checkpoint needs the torch backend"),
    (["--compare", "ort-cpu", "--torch-checkpoint", "X"], "--torch-checkpoint needs the torch backend"),
])
def test_torch_checkpoint_needs_the_torch_backend(demo_onnx: Path, tmp_path: Path, args: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert message in _refused(demo_onnx, tmp_path, args, capsys)


def test_torch_checkpoint_needs_an_onnx_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--backend", "torch", "--torch-checkpoint", "X", "--json", str(tmp_path / "b.json")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--torch-checkpoint" in lines[0] and "ONNX" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_torch_checkpoint_with_the_torch_backend_still_runs(demo_onnx: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main([str(demo_onnx), "--compare", "torch,ort-cpu", "--torch-checkpoint", "demo", "--warmup", "0",
                 "--iterations", "1", "--profile-runs", "0", "--threads", "1", "--json", str(out)]) == 0
    assert out.is_file()
    assert "at least 20" in capsys.readouterr().err  # the note, printed once the flags passed
