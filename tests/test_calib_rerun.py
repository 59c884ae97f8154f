"""Calibration reruns reuse the cached ranges and the cached accuracy report; calibration never
writes beside the user's model. (Reruns to another output and the cache folder itself:
tests/test_calib_cache_dir.py.)"""

from __future__ import annotations

import json
import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from retinanet_trt.calib import int8, report_cache, scoring, sets
from retinanet_trt.calib.convert import ConvertOptions, convert


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny preset, random weights, static 128x160 input, resize 128/160 so demo images fit."""
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx
    from retinanet_trt.model import build_model
    from retinanet_trt.spec.presets import get_preset

    spec = get_preset("tiny")
    spec.preprocess.min_size, spec.preprocess.max_size = 128, 160
    path = tmp_path_factory.mktemp("rerun") / "tiny.onnx"
    export_onnx(build_model(spec, seed=0), spec, path, ExportOptions(input_hw=(128, 160)))
    return path


def _opts(**kw: Any) -> ConvertOptions:
    base: dict[str, Any] = {"calib": "demo", "calib_images": 4, "progress": False, "evaluate_map": False}
    return ConvertOptions(**{**base, **kw})


def _shared(tiny: Path) -> Path:
    """The cache folder of the module fixtures `first` and `base` (each test has its own otherwise)."""
    return tiny.parent / "cache"


class _Calls:
    """Stands in for a function and counts calls; `fail` makes any call an error."""

    def __init__(self, real: Any, fail: bool = False) -> None:
        self.real, self.fail, self.count = real, fail, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        if self.fail:
            raise AssertionError("called on a rerun that should reuse its caches")
        return self.real(*args, **kwargs)


@pytest.fixture(scope="module")
def first(tiny: Path) -> tuple[Path, dict]:
    """One full run: mAP on 4 demo val images and the sensitivity sweep, so all of it is cached."""
    out = tiny.with_name("full.int8.onnx")
    return out, convert(tiny, "int8", out, _opts(evaluate_map=True, eval_images=4, sensitivity=True, cache_dir=_shared(tiny)))


def test_rerun_reuses_ranges_and_report(tiny: Path, first: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out, report = first
    assert report["cache"]["report_reused"] is False and Path(report["cache"]["report_path"]).is_file()
    assert Path(report["cache"]["report_path"]).parent == _shared(tiny) / "reports"
    before = out.stat().st_mtime_ns
    monkeypatch.setattr(scoring, "score", _Calls(scoring.score, fail=True))
    monkeypatch.setattr(int8, "calibrate", _Calls(int8.calibrate, fail=True))
    monkeypatch.setattr(int8, "quantize", _Calls(int8.quantize, fail=True))
    monkeypatch.setattr(sets, "_demo_images", _Calls(sets._demo_images, fail=True))  # nor draws the demo set
    again = convert(tiny, "int8", out, _opts(evaluate_map=True, eval_images=4, sensitivity=True, cache_dir=_shared(tiny)))
    c = again["cache"]
    assert c["reused"] and c["report_reused"] and c["output_reused"] and "report_note" not in c
    for key in ("calibration", "sqnr_db", "levels", "map", "map_detail", "sensitivity", "arithmetic", "exclusions", "lint"):
        assert again[key] == report[key], key
    assert again["times_s"]["calibrate_s"] == 0.0 and again["times_s"]["convert_s"] == 0.0
    assert "held_out_s" not in again["times_s"] and c["scored_times_s"]["sensitivity_s"] > 0
    assert out.stat().st_mtime_ns == before  # an unchanged output is not rewritten
    # and the command line says so in one line
    from retinanet_trt.cli.calib import print_report

    print_report(again)
    text = capsys.readouterr().out
    assert "scores: reused from" in text and "kept " in text


@pytest.fixture(scope="module")
def base(tiny: Path) -> Path:
    """A cheaper run (mAP on 2 images, no sweep) that each change below is made against."""
    out = tiny.with_name("base.int8.onnx")
    convert(tiny, "int8", out, _opts(evaluate_map=True, eval_images=2, cache_dir=_shared(tiny)))
    return out


@pytest.mark.parametrize(("change", "part"), [
    ({"method": "percentile"}, "method"),
    ({"exclude": ["p3"]}, "exclusions"),
    ({"default_exclusions": False}, "exclusions"),
    ({"seed": 1}, "calibration"),
    ({"calib_images": 3}, "calibration"),
    ({"eval_images": 3}, "evaluation"),
    ({"evaluate_map": False}, "evaluation"),
])
def test_each_change_recomputes(tiny: Path, base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                change: dict, part: str) -> None:
    out, folder = _copy_run(base, tmp_path)
    spy = _Calls(scoring.score)
    monkeypatch.setattr(scoring, "score", spy)
    unchanged = convert(tiny, "int8", out, _opts(evaluate_map=True, eval_images=2, cache_dir=folder))
    assert spy.count == 0 and unchanged["cache"]["report_reused"]  # the copy itself is reused
    report = convert(tiny, "int8", out, _opts(**{"evaluate_map": True, "eval_images": 2, "cache_dir": folder, **change}))
    assert spy.count == 1 and not report["cache"]["report_reused"]
    assert part in report["cache"]["report_note"], report["cache"]["report_note"]


def test_turning_the_sweep_off_recomputes(tiny: Path, first: tuple[Path, dict], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out, folder = _copy_run(first[0], tmp_path)
    spy = _Calls(scoring.score)
    monkeypatch.setattr(scoring, "score", spy)
    assert convert(tiny, "int8", out, _opts(evaluate_map=True, eval_images=4, sensitivity=True,
                                            cache_dir=folder))["cache"]["report_reused"]
    report = convert(tiny, "int8", out, _opts(evaluate_map=True, eval_images=4, sensitivity=False, cache_dir=folder))
    assert spy.count == 1 and "sensitivity" in report["cache"]["report_note"] and "sensitivity" not in report


def _copy_run(out: Path, folder: Path) -> tuple[Path, Path]:
    """The output of a module fixture's run and the cache folder, copied into `folder`: each test
    changes its own copy. Returns (output, cache folder)."""
    shutil.copy2(out, folder / out.name)
    shutil.copytree(_shared(out), folder / "cache")
    return folder / out.name, folder / "cache"


def test_other_model_recomputes(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "m.int8.onnx"
    convert(tiny, "int8", out, _opts())
    model = onnx.load(str(tiny))
    w = model.graph.initializer[0]
    arr = numpy_helper.to_array(w).copy()
    arr.flat[0] += 0.5
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    other = tmp_path / "other.onnx"
    onnx.save(model, str(other))
    spy = _Calls(scoring.score)
    monkeypatch.setattr(scoring, "score", spy)
    report = convert(other, "int8", out, _opts())
    assert spy.count == 1 and not report["cache"]["reused"] and "source" in report["cache"]["report_note"]
    # so does another version of a package that affects the scores
    real = report_cache.score_versions
    monkeypatch.setattr(report_cache, "score_versions", lambda: {**real(), "onnxruntime": "0.0.1"})
    report = convert(other, "int8", out, _opts())
    assert spy.count == 2 and "versions" in report["cache"]["report_note"]


def test_changed_output_recomputes(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.int8.onnx"
    first = convert(tiny, "int8", out, _opts())
    spy = _Calls(scoring.score)
    monkeypatch.setattr(scoring, "score", spy)
    # a damaged output is written again; the same bytes come out, so the scores still hold
    out.write_bytes(out.read_bytes()[:-10])
    again = convert(tiny, "int8", out, _opts())
    assert spy.count == 0 and again["cache"]["report_reused"] and not again["cache"]["output_reused"]
    # a conversion that writes other bytes than the ones scored is scored again
    rpath = Path(first["cache"]["report_path"])
    data = json.loads(rpath.read_text())
    data["entry"]["output_sha256"] = "0" * 64
    rpath.write_text(json.dumps(data))
    again = convert(tiny, "int8", out, _opts())
    assert spy.count == 1 and not again["cache"]["report_reused"] and "differs" in again["cache"]["report_note"]


def _damage_scores(text: str) -> str:
    data = json.loads(text)
    data["entry"]["scores"] = ["not", "an", "object"]  # key parts intact: only the entry is damaged
    return json.dumps(data)


def _drop_lint(text: str) -> str:
    data = json.loads(text)
    del data["entry"]["conversion"]["lint"]
    return json.dumps(data)


@pytest.mark.parametrize("damage", [
    lambda _: "{not json", lambda _: '{"format": "retinanet_trt.calib_report_cache/1"}', lambda _: "[]", lambda _: "",
    lambda t: t[: len(t) // 2], _damage_scores, _drop_lint,
], ids=["not-json", "no-entry", "list", "empty", "truncated", "scores-not-object", "no-lint"])
def test_corrupt_report_cache_is_ignored_and_rewritten(tiny: Path, tmp_path: Path, damage: Any) -> None:
    out = tmp_path / "m.int8.onnx"
    first = convert(tiny, "int8", out, _opts())
    rpath = Path(first["cache"]["report_path"])
    rpath.write_text(damage(rpath.read_text()))
    again = convert(tiny, "int8", out, _opts())
    assert not again["cache"]["report_reused"] and "ignored" in again["cache"]["report_note"]
    assert again["sqnr_db"] == first["sqnr_db"]
    assert convert(tiny, "int8", out, _opts())["cache"]["report_reused"]  # the rewritten cache serves again


def test_fp16_without_calibration_set_reuses_its_report(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.fp16.onnx"
    first = convert(tiny, "fp16", out, ConvertOptions(progress=False))
    assert first["cache"]["path"] is None and not first["cache"]["report_reused"]
    monkeypatch.setattr(scoring, "score", _Calls(scoring.score, fail=True))
    again = convert(tiny, "fp16", out, ConvertOptions(progress=False))
    assert again["cache"]["report_reused"] and again["sqnr_db"] == first["sqnr_db"]


# ------------------------------------------------------------------- nothing written beside the model

def test_user_file_named_like_ort_temp_survives(tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "user"
    folder.mkdir()
    model = folder / "net.onnx"
    shutil.copy(tiny, model)
    mine = folder / "net-inferred.onnx"  # the name ORT's calibrator writes, then deletes, beside its model
    mine.write_bytes(b"the user's own file")
    before = sorted(p.name for p in folder.iterdir())
    convert(model, "int8", tmp_path / "net.int8.onnx", _opts())
    assert mine.read_bytes() == b"the user's own file"
    assert sorted(p.name for p in folder.iterdir()) == before


def test_calibrates_a_model_in_a_read_only_folder(tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    model = folder / "net.onnx"
    shutil.copy(tiny, model)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: chmod does not make the folder read-only")
        report = convert(model, "int8", tmp_path / "net.int8.onnx", _opts())
        assert report["lint"]["passed"]
    finally:
        folder.chmod(stat.S_IRWXU)


def test_two_calibrations_of_one_model_at_once(tiny: Path) -> None:
    from retinanet_trt.spec.metadata import read_spec

    images = sets.load_calibration(sets.open_calib_set("demo"), read_spec(tiny), 2, 0, (128, 160), progress=False)
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: int8.calibrate(tiny, images.inputs, "minmax", progress=False), range(2)))
    assert runs[0] == runs[1] and runs[0]["data"]
