"""The calibration cache is content-addressed (issue 18, item 4): the output's name is no input, so a
rerun with the same inputs and another output reuses the ranges and the report; the key covers
the calibrator (package versions, this package's calibration code); entries are written
atomically, nothing lands beside the output, and a cache folder that cannot be written costs the
reuse, not the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from retinanet_trt.calib import cache, int8, report_cache, scoring, sets
from retinanet_trt.calib.convert import ConvertOptions, convert


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny preset, random weights, static 128x160 input, resize 128/160 so demo images fit."""
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx
    from retinanet_trt.model import build_model
    from retinanet_trt.spec.presets import get_preset

    spec = get_preset("tiny")
    spec.preprocess.min_size, spec.preprocess.max_size = 128, 160
    path = tmp_path_factory.mktemp("cachedir") / "tiny.onnx"
    export_onnx(build_model(spec, seed=0), spec, path, ExportOptions(input_hw=(128, 160)))
    return path


def _opts(folder: Path, **kw: Any) -> ConvertOptions:
    base: dict[str, Any] = {"calib": "demo", "calib_images": 4, "progress": False, "evaluate_map": True,
                            "eval_images": 2, "cache_dir": folder}
    return ConvertOptions(**{**base, **kw})


class _Fail:
    def __init__(self, what: str) -> None:
        self.what = what

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{self.what} called on a rerun that should reuse the cache")


def test_rerun_to_another_output_reuses_ranges_and_report(tiny: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cache"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = convert(tiny, "int8", tmp_path / "a" / "m.int8.onnx", _opts(folder))
    assert not first["cache"]["reused"] and not first["cache"]["report_reused"]
    # only the output beside the output; the ranges and the report are in the cache folder under their keys
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["m.int8.onnx"]
    assert Path(first["cache"]["path"]) == folder / "ranges" / f"{first['cache']['key']}.calib.json"
    assert Path(first["cache"]["report_path"]).parent == folder / "reports"
    assert not list(folder.rglob("*.part"))  # written atomically: no temporary left behind
    monkeypatch.setattr(int8, "calibrate", _Fail("calibrate"))
    monkeypatch.setattr(scoring, "score", _Fail("score"))
    monkeypatch.setattr(sets, "_demo_images", _Fail("drawing the demo set"))
    other = tmp_path / "b" / "other-name.onnx"
    again = convert(tiny, "int8", other, _opts(folder))
    c = again["cache"]
    assert c["reused"] and c["report_reused"] and not c["output_reused"]  # written (it did not exist), not scored
    assert c["report_path"] == first["cache"]["report_path"] and c["path"] == first["cache"]["path"]
    assert other.read_bytes() == (tmp_path / "a" / "m.int8.onnx").read_bytes()
    for key in ("sqnr_db", "levels", "map", "map_detail", "exclusions", "lint", "calibration", "arithmetic"):
        assert again[key] == first[key], key
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["other-name.onnx"]
    assert "held_out_s" not in again["times_s"] and again["times_s"]["calibrate_s"] == 0.0


def test_default_folder_is_the_environment_or_the_home_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(tmp_path / "env"))
    assert cache.default_cache_dir() == tmp_path / "env"
    monkeypatch.delenv(cache.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == tmp_path / "xdg" / "retinanet-trt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.default_cache_dir() == tmp_path / "home" / ".cache" / "retinanet-trt"


def test_another_calibrator_recalibrates(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ranges' key covers what computes them: another onnxruntime or calibration code is another key."""
    folder = tmp_path / "cache"
    first = convert(tiny, "int8", tmp_path / "m.int8.onnx", _opts(folder, evaluate_map=False))
    real = cache.calibrator_digest()
    assert cache.CacheKey("m", "i", "p", "x").calibrator == real
    monkeypatch.setattr(cache, "calibrator_digest", lambda: "another onnxruntime")
    again = convert(tiny, "int8", tmp_path / "m.int8.onnx", _opts(folder, evaluate_map=False))
    assert not again["cache"]["reused"] and again["cache"]["key"] != first["cache"]["key"]
    # a --cache file made by the other calibrator is refused, naming it
    named = Path(first["cache"]["path"])
    with pytest.raises(Exception, match="another calibrator"):
        convert(tiny, "int8", tmp_path / "x.onnx", _opts(folder, evaluate_map=False, cache=named))


def test_calibrator_digest_follows_the_calibration_code(monkeypatch: pytest.MonkeyPatch) -> None:
    real = cache.calibrator_digest()
    monkeypatch.setattr(cache, "CALIBRATOR_MODULES", (*cache.CALIBRATOR_MODULES, "retinanet_trt.calib.lint"))
    assert cache.calibrator_digest() != real
    monkeypatch.setattr(cache, "installed_versions", lambda names: {"onnxruntime": "0.0.1"})
    assert cache.calibrator_digest() != real


def test_unwritable_cache_folder_costs_the_reuse_not_the_run(tiny: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    out = tmp_path / "m.int8.onnx"
    report = convert(tiny, "int8", out, _opts(blocker, evaluate_map=False))
    assert report["lint"]["passed"] and out.is_file()
    assert "not written" in report["cache"]["note"] and "not written" in report["cache"]["report_note"]
    assert blocker.read_text().startswith("a file")


def test_a_changed_input_names_what_changed_for_that_output(tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    out = tmp_path / "m.int8.onnx"
    convert(tiny, "int8", out, _opts(folder, evaluate_map=False))
    changed = convert(tiny, "int8", out, _opts(folder, evaluate_map=False, method="percentile"))
    assert "method" in changed["cache"]["report_note"] and "calibration" not in changed["cache"]["report_note"]
    # both reports stay in the cache folder: going back reuses the first one
    back = convert(tiny, "int8", out, _opts(folder, evaluate_map=False))
    assert back["cache"]["reused"] and back["cache"]["report_reused"]
    assert len(list((folder / "reports").iterdir())) == 2


def test_damaged_entry_in_the_folder_is_recomputed(tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    first = convert(tiny, "int8", tmp_path / "m.int8.onnx", _opts(folder, evaluate_map=False))
    Path(first["cache"]["path"]).write_text("{truncated")
    Path(first["cache"]["report_path"]).write_text("[]")
    again = convert(tiny, "int8", tmp_path / "n.int8.onnx", _opts(folder, evaluate_map=False))
    assert not again["cache"]["reused"] and "not readable" in again["cache"]["replaced"]
    assert not again["cache"]["report_reused"] and "ignored" in again["cache"]["report_note"]
    assert json.loads(Path(first["cache"]["path"]).read_text())["key"] == first["cache"]["key"]  # rewritten whole
    assert again["sqnr_db"] == first["sqnr_db"]


def test_cli_cache_dir(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from retinanet_trt.cli.calib import main

    folder = tmp_path / "made" / "here"
    args = [str(tiny), "--int8", "--calib", "demo", "--calib-images", "2", "--no-map", "--quiet", "--cache-dir", str(folder)]
    assert main([*args, "-o", str(tmp_path / "a.onnx")]) == 0
    assert main([*args, "-o", str(tmp_path / "b.onnx")]) == 0
    text = capsys.readouterr().out
    assert "(reused)" in text and "scores: reused from" in text and str(folder) in text
    file = tmp_path / "file"
    file.write_text("x")
    assert main([str(tiny), "--int8", "--calib", "demo", "--cache-dir", str(file), "-o", str(tmp_path / "c.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cache-dir" in err[0] and not (tmp_path / "c.onnx").exists()


def test_report_cache_path_beside_a_named_cache_is_kept(tmp_path: Path) -> None:
    assert report_cache.report_cache_path(tmp_path / "m.calib.json") == tmp_path / "m.calib.report.json"
    assert report_cache.report_cache_path(tmp_path / "m.calib") == tmp_path / "m.calib.report.json"
