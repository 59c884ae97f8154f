"""Any quantizer's Q/DQ ONNX in (issue 18, item 2): a file made by ONNX Runtime's `quantize_static`
(QDQ format) with no retinanet_trt metadata runs through trt-eval, trt-infer and Detector.load given
--onnx FP32.onnx (the file it was quantized from) or --spec SPEC.json, and the arithmetic comes
from the graph: any QuantizeLinear means simulated Q/DQ (ORT CPU, graph optimisations off), named
in every report, also for a file that kept trt-export's fp32 metadata. A ModelOpt file kept in
tests/data (written by the benchmarks/ script) is scored the same way when it is there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from retinanet_trt.cli import eval as eval_cli
from retinanet_trt.cli import infer as infer_cli
from retinanet_trt.errors import UsageError
from retinanet_trt.runtime.backends.ort_backend import ACCURACY_ARITHMETIC, ARITHMETIC_LABELS, FUSED, SIMULATED
from retinanet_trt.runtime.detector import Detector
from retinanet_trt.spec.metadata import has_qdq, read_spec

SIMULATED_LABEL = ARITHMETIC_LABELS[ACCURACY_ARITHMETIC]
DATA = Path(__file__).resolve().parent / "data"
MODELOPT_FIXTURES = sorted(DATA.glob("*modelopt*.onnx"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32: the demo model (static 256x320) as trt-export writes it; spec: its spec as JSON;
    ort: ORT quantize_static QDQ of it, metadata stripped; ort_fp32_meta: the same graph that kept
    the fp32 file's metadata (so only the graph says it is quantized)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from retinanet_trt.calib import sets
    from retinanet_trt.demo import load_demo
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx

    folder = tmp_path_factory.mktemp("foreign")
    spec, model = load_demo()
    fp32 = folder / "demo.onnx"
    export_onnx(model, spec, fp32, ExportOptions(input_hw=(256, 320)))
    (folder / "demo.spec.json").write_text(read_spec(fp32).to_json())
    inputs = sets.load_calibration(sets.open_calib_set("demo"), spec, 8, 0, (256, 320), 1, progress=False).inputs
    name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{name: x} for x in inputs])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.items, None)

    raw = folder / "raw.int8.onnx"
    quantize_static(str(fp32), str(raw), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    proto = onnx.load(str(raw))
    kept = folder / "ort_fp32_meta.int8.onnx"
    source_meta = onnx.load(str(fp32), load_external_data=False).metadata_props
    del proto.metadata_props[:]
    stripped = folder / "ort.int8.onnx"
    onnx.save(proto, str(stripped))
    proto.metadata_props.extend(source_meta)  # trt-export's metadata, precision fp32
    onnx.save(proto, str(kept))
    return {"fp32": fp32, "spec": folder / "demo.spec.json", "ort": stripped, "ort_fp32_meta": kept}


def test_fixture_is_foreign_and_quantized(files: dict[str, Path]) -> None:
    model = onnx.load(str(files["ort"]), load_external_data=False)
    assert has_qdq(model) and not model.metadata_props
    with pytest.raises(UsageError, match=r"--spec SPEC.json or --onnx FP32.onnx"):
        read_spec(model)
    assert not has_qdq(files["fp32"])


def _eval(capsys: pytest.CaptureFixture[str], tmp_path: Path, model: Path, *extra: str) -> dict:
    out = tmp_path / f"{model.stem}.{len(list(tmp_path.iterdir()))}.json"
    code = eval_cli.main([str(model), *extra, "--demo", "--demo-images", "6", "--json", str(out), "--no-progress"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"arithmetic: {SIMULATED_LABEL}" in printed.out
    return json.loads(out.read_text())


def test_trt_eval_scores_an_ort_quantized_file_in_simulated_arithmetic(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    by_onnx = _eval(capsys, tmp_path, files["ort"], "--onnx", str(files["fp32"]))
    by_spec = _eval(capsys, tmp_path, files["ort"], "--spec", str(files["spec"]))
    # the metadata says fp32, the graph quantizes: scored in simulated Q/DQ all the same
    kept_meta = _eval(capsys, tmp_path, files["ort_fp32_meta"])
    for stats in (by_onnx, by_spec, kept_meta):
        assert stats["arithmetic"] == SIMULATED_LABEL and stats["num_images"] == 6
    assert by_onnx["AP"] == by_spec["AP"] == kept_meta["AP"] > 0.3
    fp32 = tmp_path / "fp32.json"
    assert eval_cli.main([str(files["fp32"]), "--demo", "--demo-images", "6", "--json", str(fp32)]) == 0
    assert "arithmetic" not in json.loads(fp32.read_text())  # a float file has no Q/DQ to simulate
    assert abs(json.loads(fp32.read_text())["AP"] - by_onnx["AP"]) < 0.05


def test_simulated_is_what_a_numpy_free_run_of_the_same_session_gives(files: dict[str, Path]) -> None:
    """The Detector trt-eval builds runs the graph with optimisations off, not ORT's fused kernels."""
    from retinanet_trt.calib.scoring import scoring_session

    with Detector.load(files["ort"], "ort-cpu", onnx=str(files["fp32"]), arithmetic=SIMULATED) as det:
        batch = det.prepare([np.full((200, 300, 3), 90, np.uint8)])
        got = det.backend.run(batch.images)
        sess = scoring_session(files["ort"])
        want = sess.run(None, {sess.get_inputs()[0].name: batch.images})
        assert all(np.array_equal(got[o.name], w) for o, w in zip(sess.get_outputs(), want))
        assert det.spec.head.num_classes == read_spec(files["fp32"]).head.num_classes


def _infer(capsys: pytest.CaptureFixture[str], out: Path, model: Path, image: Path, *extra: str) -> list:
    code = infer_cli.main([str(model), str(image), *extra, "-o", str(out), "--no-draw"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"arithmetic: {SIMULATED_LABEL}" in printed.out
    return json.loads((out / "detections.json").read_text())


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from retinanet_trt.demo.synthetic import generate_dataset

    ann = generate_dataset(tmp_path_factory.mktemp("photo"), 1, 5, split="val")
    return ann.parent / json.loads(ann.read_text())["images"][0]["file_name"]


def test_trt_infer_runs_an_ort_quantized_file(files: dict[str, Path], photo: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    by_onnx = _infer(capsys, tmp_path / "a", files["ort"], photo, "--onnx", str(files["fp32"]))
    by_spec = _infer(capsys, tmp_path / "b", files["ort"], photo, "--spec", str(files["spec"]))
    kept_meta = _infer(capsys, tmp_path / "c", files["ort_fp32_meta"], photo)
    assert by_onnx and by_onnx == by_spec == kept_meta


def _one_line_error(capsys: pytest.CaptureFixture[str], main, argv: list[str], *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]


def test_bad_inputs_are_one_line(files: dict[str, Path], photo: Path, tmp_path: Path, tiny_onnx: tuple,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from retinanet_trt.spec import ModelSpec

    ort, fp32 = str(files["ort"]), str(files["fp32"])
    demo = ["--demo", "--demo-images", "2"]
    _one_line_error(capsys, eval_cli.main, [ort, *demo], "no retinanet_trt spec", "--spec", "--onnx")
    # --onnx that is another network: the inputs / outputs disagree
    _one_line_error(capsys, eval_cli.main, [ort, "--onnx", str(tiny_onnx[0]), *demo], "not the same network")
    _one_line_error(capsys, eval_cli.main, [ort, "--onnx", str(tmp_path / "none.onnx"), *demo], "not found")
    # an FP32 reference without a spec of its own cannot lend one
    _one_line_error(capsys, eval_cli.main, [ort, "--onnx", ort, *demo], "no retinanet_trt spec")
    # a spec that is not this graph's (other class count)
    wrong = ModelSpec.from_json(files["spec"].read_text())
    wrong.head.num_classes += 3
    bad_spec = tmp_path / "wrong.spec.json"
    bad_spec.write_text(wrong.to_json())
    _one_line_error(capsys, eval_cli.main, [ort, "--spec", str(bad_spec), *demo], "spec")
    _one_line_error(capsys, eval_cli.main, [ort, "--spec", str(tmp_path / "none.json"), *demo], "not found")
    not_json = tmp_path / "not.json"
    not_json.write_text("{oops")
    _one_line_error(capsys, eval_cli.main, [ort, "--spec", str(not_json), *demo], "not valid JSON")
    # a checkpoint or 'demo' carries its own spec
    _one_line_error(capsys, eval_cli.main, ["demo", "--onnx", fp32, *demo], "carry their own spec")
    out = tmp_path / "never"
    _one_line_error(capsys, infer_cli.main, [ort, str(photo), "-o", str(out)], "--onnx")
    assert not out.exists()
    with pytest.raises(UsageError, match="not both"):
        Detector.load(ort, "ort-cpu", onnx=fp32, spec=read_spec(fp32))


def test_detector_load_takes_spec_or_onnx(files: dict[str, Path]) -> None:
    spec = read_spec(files["fp32"])
    image = np.full((240, 320, 3), 128, np.uint8)
    with Detector.load(files["ort"], "ort-cpu", spec=spec, arithmetic=SIMULATED) as a, \
            Detector.load(files["ort"], "ort-cpu", onnx=files["fp32"], arithmetic=SIMULATED) as b:
        da, db = a(image), b(image)
        assert np.array_equal(da.boxes, db.boxes) and np.array_equal(da.scores, db.scores)
        assert a.backend.arithmetic == SIMULATED
    with Detector.load(files["ort"], "ort-cpu", spec=spec) as fused:  # the API default stays ORT's own
        assert fused.backend.arithmetic == FUSED


def test_trt_calib_scores_another_tools_file(files: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from retinanet_trt.cli.calib import main as calib_main

    js = tmp_path / "r.json"
    code = calib_main([str(files["ort"]), "--onnx", str(files["fp32"]), "--calib", "demo", "--calib-images", "4",
                       "--eval-images", "6", "--quiet", "--json", str(js)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"arithmetic: {SIMULATED_LABEL}" in printed.out and "scored " in printed.out
    report = json.loads(js.read_text())
    assert report["scored_only"] and report["precision"] == "int8" and report["arithmetic"] == SIMULATED_LABEL
    assert report["map_detail"]["arithmetic"] == SIMULATED_LABEL and report["map_detail"]["images"] == 6
    assert report["map"]["fp32"] > 0.3 and abs(report["map"]["int8"] - report["map"]["fp32"]) < 0.05
    assert min(report["sqnr_db"].values()) > 15 and "passed" in report["lint"]
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # nothing else written
    # with --spec for a reference without metadata of its own, the same figures
    bare = tmp_path / "bare.onnx"
    proto = onnx.load(str(files["fp32"]))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    js2 = tmp_path / "r2.json"
    assert calib_main([str(files["ort"]), "--onnx", str(bare), "--spec", str(files["spec"]), "--quiet", "--json", str(js2)]) == 0
    assert json.loads(js2.read_text())["sqnr_db"] == report["sqnr_db"]
    capsys.readouterr()
    for argv, needle in [
        ([str(files["ort"]), "--onnx", str(files["fp32"]), "-o", str(tmp_path / "x.onnx")], "-o does not apply"),
        ([str(files["ort"]), "--onnx", str(files["fp32"]), "--fp16"], "computes in int8"),
        ([str(files["ort"]), "--onnx", str(files["ort"])], "already holds Q/DQ"),
        ([str(files["fp32"]), "--onnx", str(files["fp32"])], "no Q/DQ nodes"),
        ([str(files["ort"]), "--int8", "--calib", "demo"], "--onnx FP32.onnx"),
        ([str(files["ort"])], "give --int8 or --fp16"),
    ]:
        _one_line_error(capsys, calib_main, argv, needle)
    assert not (tmp_path / "x.onnx").exists()


@pytest.fixture(scope="module")
def modelopt_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FP32 file tests/data/tiny_modelopt_int8.onnx was quantized from, exported again as
    `benchmarks/modelopt_compare.py --fixture` does (fixture_spec: tiny, width 8, FPN/head 16, seed 0)."""
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx
    from retinanet_trt.model import build_model
    from retinanet_trt.spec.presets import get_preset

    spec = get_preset("tiny")
    spec.preprocess.min_size, spec.preprocess.max_size = 128, 160
    spec.backbone.stem_channels, spec.backbone.width_per_group = 8, 8
    spec.fpn.out_channels = spec.head.channels = 16
    path = tmp_path_factory.mktemp("modelopt") / "tiny.onnx"
    export_onnx(build_model(spec, seed=0), spec, path, ExportOptions(input_hw=(128, 160)))
    return path


@pytest.mark.skipif(not MODELOPT_FIXTURES, reason="no ModelOpt fixture in tests/data (written by the benchmarks/ script)")
@pytest.mark.parametrize("fixture", MODELOPT_FIXTURES, ids=[p.name for p in MODELOPT_FIXTURES])
def test_modelopt_file_runs_in_simulated_arithmetic(fixture: Path, modelopt_source: Path, photo: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """ModelOpt's output carries no retinanet_trt metadata: with --onnx (or --spec) it runs through
    trt-eval, trt-infer and trt-calib's report, scored in simulated Q/DQ, and each says so."""
    from retinanet_trt.cli.calib import main as calib_main

    model = onnx.load(str(fixture), load_external_data=False)
    assert has_qdq(model) and not any(p.key.startswith("retinanet_trt") for p in model.metadata_props)
    spec_file = tmp_path / "tiny.spec.json"
    spec_file.write_text(read_spec(modelopt_source).to_json())
    for how in (["--onnx", str(modelopt_source)], ["--spec", str(spec_file)]):
        stats = _eval(capsys, tmp_path, fixture, *how)
        assert stats["arithmetic"] == SIMULATED_LABEL and stats["num_images"] == 6
        _infer(capsys, tmp_path / f"infer{len(how[1])}", fixture, photo, *how)
    js = tmp_path / "r.json"
    assert calib_main([str(fixture), "--onnx", str(modelopt_source), "--quiet", "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    assert report["arithmetic"] == SIMULATED_LABEL and report["precision"] == "int8"
    assert min(report["sqnr_db"].values()) > 15, report["sqnr_db"]  # it is this network, quantized


def test_trt_build_takes_another_tools_file_with_onnx_or_spec(files: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from retinanet_trt.cli.build import main as build_main
    from retinanet_trt.tensorrt.engine import available

    ort = str(files["ort"])
    _one_line_error(capsys, build_main, [ort, "-o", str(tmp_path / "x.engine")], "--spec SPEC.json or --onnx")
    if not available()[0]:  # past the spec: what is left is the missing TensorRT
        for how in (["--onnx", str(files["fp32"])], ["--spec", str(files["spec"])]):
            _one_line_error(capsys, build_main, [ort, *how, "-o", str(tmp_path / "x.engine")], "cannot build an engine here")
    assert not (tmp_path / "x.engine").exists()
    # an FP32 file without metadata converts with --spec, and the INT8 file it writes describes itself
    bare = tmp_path / "bare.onnx"
    proto = onnx.load(str(files["fp32"]))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    out = tmp_path / "bare.int8.onnx"
    assert build_main([str(bare), "--int8", "--calib", "demo", "--calib-images", "2", "--onnx-only", "--spec",
                       str(files["spec"]), "-o", str(out)]) == 0, capsys.readouterr().err
    assert read_spec(out).to_dict() == read_spec(files["fp32"]).to_dict() and has_qdq(out)
