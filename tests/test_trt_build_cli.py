"""trt-build as a user runs it where TensorRT cannot be installed: one-line errors, exit status 2,
no partial files, and --onnx-only still making the precision ONNX."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

from retinanet_trt.cli.build import main, parse_shape_range
from retinanet_trt.errors import UsageError
from retinanet_trt.tensorrt.build import detect_precision, resolve_profiles
from retinanet_trt.tensorrt.engine import available

TRT_OK, TRT_WHY = available()


@pytest.fixture(scope="module")
def static_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset at a fixed 1x3x128x128, exported the way a user would."""
    from retinanet_trt.cli.export import main as export_main

    path = tmp_path_factory.mktemp("static") / "tiny.onnx"
    assert export_main(["--preset", "tiny", "--random-init", "--input-size", "128", "128", "-o", str(path), "--quiet"]) == 0
    return path


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.skipif(TRT_OK, reason=f"TensorRT is usable here ({TRT_WHY}); tests/test_gpu_acceptance.py covers builds")
def test_without_tensorrt_one_line_and_exit_2(static_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for extra in ([], ["--fp16"], ["--int8", "--calib", "demo"]):
        code, out, err = _run([str(static_onnx), "-o", str(tmp_path / "m.engine"), *extra], capsys)
        assert code == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and "cannot build an engine here" in err and "--onnx-only" in err
        assert "Traceback" not in err
    assert _files(tmp_path) == set()


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["--help"], capsys)
    assert code == 0 and "examples:" in out and "--shapes 1x3x320x320/1x3x480x640/4x3x800x1088" in out


def _no_spec_onnx(folder: Path) -> Path:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["images"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    path = folder / "plain.onnx"
    onnx.save(onnx.helper.make_model(graph), path)
    return path


BAD_STATIC = [
    (lambda m, t: ["missing.onnx"], "not found"),
    (lambda m, t: [m, "--shapes", "1x3x128x128/1x3x128x128"], "is not MIN/OPT/MAX"),
    (lambda m, t: [m, "--shapes", "1x3x128/1x3x1a8/1x3x128"], "is not MIN/OPT/MAX"),
    (lambda m, t: [m, "--shapes", "1x3x128x128/1x3x128x128/1x3x128x128"], "is static"),
    (lambda m, t: [m, "--dla-core", "0"], "DLA runs FP16 or INT8 only"),
    (lambda m, t: [m, "--fp16", "--dla-core", "-1"], "numbered from 0"),
    (lambda m, t: [m, "--gpu-fallback"], "--gpu-fallback only applies with --dla-core"),
    (lambda m, t: [m, "-o", f"{t}/missing/m.engine"], "does not exist"),
    (lambda m, t: [m, "-o", f"{t}"], "is a folder"),
    (lambda m, t: [m, "-o", f"{t}/m.onnx"], "names the engine"),
    (lambda m, t: [m, "--int8"], "--int8 needs a calibration set"),
    (lambda m, t: [m, "--calib", "demo"], "--calib only applies to --fp16 or --int8"),
    (lambda m, t: [m, "--calib-method", "max"], "--calib-method only applies to --fp16 or --int8"),
    (lambda m, t: [m, "--int8", "--calib", "demo", "--calib-images", "0"], "--calib-images 0"),
    (lambda m, t: [m, "--calib-method", "median"], "invalid choice"),
    (lambda m, t: [m, "--onnx-only"], "add --fp16 or --int8"),
    (lambda m, t: [m, "--fp16", "--int8"], "not allowed with"),
    (lambda m, t: [m, "--workspace", "0"], "positive size"),
    (lambda m, t: [m, "--workspace", "nan"], "positive size"),
    (lambda m, t: [m, "--workspace", "inf"], "positive size"),
    (lambda m, t: [m, "--workspace", "1e30"], "at most 1024"),
    (lambda m, t: [m, "--builder-opt-level", "9"], "use 0..5"),
    (lambda m, t: [m, "--plugin-lib", f"{t}/nope.so"], "plugin library"),
    (lambda m, t: [m, "--timing-cache", f"{t}/missing/cache.bin"], "does not exist"),
    (lambda m, t: [_write(t, "bad.onnx", b"not a model")], "not a readable ONNX file"),
    (lambda m, t: [str(_no_spec_onnx(Path(t)))], "no retinanet_trt spec"),
]


def _write(folder: str, name: str, data: bytes) -> str:
    path = Path(folder) / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("make_args, message", BAD_STATIC)
def test_bad_input_static_model(make_args, message, static_onnx: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                capsys: pytest.CaptureFixture[str]) -> None:
    before = _files(tmp_path)
    code, out, err = _run(make_args(str(static_onnx), str(tmp_path)), capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert not any(name.endswith((".engine", ".json")) for name in _files(tmp_path) - before)


BAD_DYNAMIC = [
    ([], "has dynamic dimensions"),
    (["--shapes", "1x1x128x160/1x1x128x160/1x1x128x160"], "dimension 1 of input images is fixed at 3"),
    (["--shapes", "1x3x256x160/1x3x128x160/1x3x128x160"], "0 < min <= opt <= max"),
    (["--shapes", "1x3x128/1x3x128/1x3x128"], "has 4 dimensions"),
    (["--fp16", "--dla-core", "0", "--shapes", "1x3x128x160/1x3x256x320/1x3x256x320"], "DLA has no dynamic shapes"),
    (["--shapes", "1x3x33x33/1x3x128x160/1x3x256x320"], "multiples of 32 (the pre-process pads every image to one), e.g. 1x3x64x64/1x3x128x160/1x3x256x320"),
    (["--shapes", "1x3x128x160/1x3x128x160/1x3x99999x99999"], "at most 16384"),
]


@pytest.mark.parametrize("args, message", BAD_DYNAMIC)
def test_bad_shapes_dynamic_model(args: list[str], message: str, tiny_onnx, tmp_path: Path,  # type: ignore[no-untyped-def]
                                  capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = tiny_onnx
    code, _, err = _run([str(path), "-o", str(tmp_path / "d.engine"), *args], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_shape_ranges_parse_and_resolve(tiny_onnx) -> None:  # type: ignore[no-untyped-def]
    lo, opt, hi = parse_shape_range("1x3x128x160/1x3x256x320/4x3x512x640")
    assert (lo, opt, hi) == ((1, 3, 128, 160), (1, 3, 256, 320), (4, 3, 512, 640))
    from retinanet_trt.tensorrt.build import onnx_inputs

    model = onnx.load(str(tiny_onnx[0]), load_external_data=False)
    profiles = resolve_profiles(onnx_inputs(model), [(lo, opt, hi), (hi, hi, hi)])
    assert profiles == [{"images": (lo, opt, hi)}, {"images": (hi, hi, hi)}]
    with pytest.raises(UsageError, match="DLA"):
        resolve_profiles(onnx_inputs(model), [(lo, opt, hi)], dla=True)


def test_precision_is_read_from_the_graph(static_onnx: Path) -> None:
    model = onnx.load(str(static_onnx))
    assert detect_precision(model) == "fp32"
    half = onnx.helper.make_node("Cast", ["images"], ["images_fp16"], to=onnx.TensorProto.FLOAT16)
    model.graph.node.insert(0, half)
    assert detect_precision(model) == "fp16"
    model.graph.node.insert(0, onnx.helper.make_node("QuantizeLinear", ["a", "s"], ["q"]))
    assert detect_precision(model) == "int8"


def test_onnx_only_writes_fp16(static_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.fp16.onnx"
    code, _, err = _run([str(static_onnx), "--fp16", "--onnx-only", "-o", str(out)], capsys)
    assert code == 0, err
    assert detect_precision(onnx.load(str(out))) == "fp16"
    assert not any(name.endswith(".engine") for name in os.listdir(tmp_path))


def test_onnx_only_writes_int8(tiny_onnx, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    # A dynamic model: the demo set's images do not fit a small static input.
    engine = tmp_path / "m.int8.engine"
    code, out, err = _run([str(tiny_onnx[0]), "--int8", "--calib", "demo", "--calib-images", "4", "--onnx-only",
                           "-o", str(engine)], capsys)
    assert code == 0, err
    assert f"wrote {tmp_path / 'm.int8.onnx'} (int8)" in out
    assert detect_precision(onnx.load(str(tmp_path / "m.int8.onnx"))) == "int8"
    assert not engine.exists()
