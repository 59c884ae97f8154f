"""Bad inputs a sweep of every CLI found (2026-12-03), each one line, the right exit status and
nothing left behind: outputs that are devices or FIFOs, JSON nested too deeply, an unbounded
--queue-mb, an empty or folder "ONNX", trt-infer writing into its input folder, trt-calib leaving
its output after an error or an interrupt while scoring, and FP16 files with a level kept FP32."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from retinanet_trt.cli import calib as calib_cli
from retinanet_trt.cli import export as export_cli
from retinanet_trt.cli import infer as infer_cli

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sweep") / "demo.onnx"
    assert export_cli.main(["--demo", "-o", str(path), "--quiet"]) == 0
    return path


def _one_line(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert all(n in err[0] for n in needles), err
    return err[0]


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("flag", ["-o", "--json"])
def test_an_output_that_is_a_fifo_is_refused_and_stays_a_fifo(flag: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    argv = ["--demo", "-o", str(fifo if flag == "-o" else tmp_path / "m.onnx")]
    if flag == "--json":
        argv += ["--json", str(fifo)]
    assert export_cli.main(argv) == 2
    _one_line(capsys, "not a regular file")
    assert fifo.is_fifo() and not (tmp_path / "m.onnx").exists()


def test_json_nested_too_deeply_is_one_line(tmp_path: Path, demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    image = _image(tmp_path / "x.png")
    assert infer_cli.main([str(demo), str(image), "--spec", str(deep), "-o", str(tmp_path / "o")]) == 2
    _one_line(capsys, "deep.json")
    assert calib_cli.main([str(demo), "--int8", "--calib", "demo", "--calib-images", "2", "--no-map", "--cache", str(deep),
                           "-o", str(tmp_path / "c.onnx")]) == 2
    _one_line(capsys, "deep.json")
    assert calib_cli.main([str(demo), "--int8", "--calib", str(deep), "--no-map", "-o", str(tmp_path / "c.onnx")]) == 2
    _one_line(capsys, "deep.json", "nests too deeply")
    from retinanet_trt.cli import eval as eval_cli

    assert eval_cli.main([str(demo), "--annotations", str(deep), "--images", str(tmp_path)]) == 2
    _one_line(capsys, "deep.json", "nests too deeply")
    assert not (tmp_path / "o").exists() and not (tmp_path / "c.onnx").exists()


@pytest.mark.parametrize("value", ["inf", "nan", "1e308", "0", "-5"])
def test_queue_mb_must_be_finite_and_positive(value: str, tmp_path: Path, demo: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    image = _image(tmp_path / "x.png")
    assert infer_cli.main([str(demo), str(image), "--queue-mb", value, "-o", str(tmp_path / "o")]) == 2
    _one_line(capsys, "--queue-mb")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["empty", "folder"])
def test_an_empty_or_folder_onnx_says_what_it_is(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.onnx"
    if kind == "empty":
        model.write_bytes(b"")
    else:
        model.mkdir()
    image = _image(tmp_path / "x.png")
    assert infer_cli.main([str(model), str(image), "-o", str(tmp_path / "o")]) == 2
    _one_line(capsys, "empty (0 bytes)" if kind == "empty" else "is a folder")


def test_infer_refuses_to_write_into_its_input_folder(tmp_path: Path, demo: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "photos"
    _image(folder / "a.png")
    assert infer_cli.main([str(demo), str(folder), "-o", str(folder)]) == 2
    _one_line(capsys, "input folder")
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]


@pytest.mark.parametrize("group", ["p3", "head", "p7/cls_pred/Conv"])
def test_fp16_with_a_level_kept_fp32_is_a_valid_file(group: str, tmp_path: Path, demo: Path) -> None:
    """The head's convs share weights over levels and the predictors write graph outputs: keeping
    one level FP32 must leave it its own FP32 weights and FP32 outputs (it made an invalid file)."""
    out = tmp_path / "m.fp16.onnx"
    assert calib_cli.main([str(demo), "--fp16", "--no-map", "--exclude", group, "--quiet", "-o", str(out)]) == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    from retinanet_trt.calib.select import select_nodes

    inits = {t.name: t for t in model.graph.initializer}
    chosen = set(select_nodes(onnx.load(str(demo)), [group]))
    kept = [n for n in model.graph.node if n.name in chosen and n.op_type == "Conv"]
    assert kept and all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in kept)
    others = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in chosen and n.input[1] in inits]
    assert others and all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT16 for n in others)


def test_a_file_failing_lint_is_not_left_on_disk(tmp_path: Path, demo: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from retinanet_trt.calib import lint

    out = tmp_path / "m.int8.onnx"
    out.write_bytes(b"an older file the user keeps")
    failing = lint.LintResult(passed=False, problems=["a planted problem"])
    monkeypatch.setattr(lint, "lint_file", lambda path: failing)
    assert calib_cli.main([str(demo), "--int8", "--calib", "demo", "--calib-images", "2", "--no-map", "--quiet",
                           "-o", str(out)]) == 2
    _one_line(capsys, "a planted problem")
    assert out.read_bytes() == b"an older file the user keeps"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_calib_interrupted_while_scoring_leaves_no_output(sig: int, code: int, tmp_path: Path, demo: Path) -> None:
    out, report = tmp_path / "c.onnx", tmp_path / "c.json"
    env = {**os.environ, "RETINANET_TRT_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([str(BIN / "trt-calib"), str(demo), "--int8", "--calib", "demo", "--calib-images", "4",
                             "--eval-images", "300", "-o", str(out), "--json", str(report)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # scoring (300 images of COCO mAP) starts once the ranges are cached: interrupt it then
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((tmp_path / "cache").glob("ranges/*.json")):
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert not out.exists() and not report.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_scoring_against_another_fp32_file_is_refused_or_warned(tmp_path: Path, demo: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """trt-calib X.int8.onnx --onnx OTHER.onnx: refused (exit 2) when X records its source and it is
    another file; a file without that record (another tool's) gets a one-line warning instead."""
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx
    from retinanet_trt.model import build_model
    from retinanet_trt.spec.metadata import read_spec

    spec = read_spec(demo)
    other = tmp_path / "other.onnx"  # the demo's architecture and input, random weights
    export_onnx(build_model(spec, seed=3), spec, other, ExportOptions(input_hw=(256, 320)))
    q = tmp_path / "demo.int8.onnx"
    assert calib_cli.main([str(demo), "--int8", "--calib", "demo", "--calib-images", "2", "--no-map", "--quiet",
                           "-o", str(q)]) == 0
    capsys.readouterr()
    assert calib_cli.main([str(q), "--onnx", str(other), "--no-map"]) == 2
    _one_line(capsys, "made from another FP32 file")
    model = onnx.load(str(q))  # the same file without this project's record of its source
    kept = [p for p in model.metadata_props]
    del model.metadata_props[:]
    for prop in kept:
        if prop.key != "retinanet_trt.info":
            model.metadata_props.add(key=prop.key, value=prop.value)
    foreign = tmp_path / "foreign.int8.onnx"
    onnx.save(model, str(foreign))
    assert calib_cli.main([str(foreign), "--onnx", str(other), "--no-map"]) == 0
    _one_line(capsys, "warning", "is it the FP32 file")
    assert calib_cli.main([str(foreign), "--onnx", str(demo), "--no-map"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "needle"), [
    (["--fp16", "--sensitivity"], "--sensitivity applies to --int8 only"),
    (["--fp16", "--method", "entropy"], "--method applies to --int8 only"),
    (["--fp16", "--quantize-predictors"], "--quantize-predictors applies to --int8 only"),
    (["--int8", "--calib", "demo", "--image-root", "nowhere"], "--image-root"),
])
def test_flags_that_do_not_apply_are_refused(extra: list[str], needle: str, tmp_path: Path, demo: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    assert calib_cli.main([str(demo), *extra, "--no-map", "-o", str(out)]) == 2
    _one_line(capsys, needle)
    assert not out.exists()


@pytest.mark.parametrize(("name", "needle"), [("adir", "is a folder"), ("t.caffemodel", "is not a Caffe .caffemodel"),
                                               ("t.safetensors", "is not a .safetensors file")])
def test_a_checkpoint_that_is_a_folder_or_text_says_so(name: str, needle: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / name
    if name == "adir":
        path.mkdir()
    else:
        path.write_text("hello\n")
    assert export_cli.main([str(path), "-o", str(tmp_path / "m.onnx")]) == 2
    _one_line(capsys, needle)
    assert not (tmp_path / "m.onnx").exists()
