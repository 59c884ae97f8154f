"""trt-inspect: prints framework, spec, parameter count and key mapping; JSON outputs; one-line errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import checkpoint_factory as cf
import numpy as np
import pytest
import torch

from retinanet_trt.cli.inspect import main
from retinanet_trt.spec import ModelSpec


@pytest.fixture(scope="module")
def yhenon_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A yhenon R50 state dict of zeros (the key names and shapes are what inspect reads)."""
    path = tmp_path_factory.mktemp("inspect") / "coco_resnet_50_state_dict.pt"
    sd = {k: torch.zeros(shape, dtype=torch.int64 if role == "count" else torch.float32)
          for k, (role, shape) in cf.yhenon_keys().items()}
    torch.save(sd, path)
    return path


def test_prints_framework_spec_parameters_and_mapping(yhenon_pt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(yhenon_pt)]) == 0
    out = capsys.readouterr().out
    assert "source      yhenon" in out
    assert "auto-detected source yhenon (yhenon/pytorch-retinanet): 354 of 354 keys match its names" in out
    assert "parameters  37,915,572 learned" in out
    assert "box coder   weights [10.0, 10.0, 5.0, 5.0], dw/dh clamp none, +1 no" in out
    assert "max detections unlimited; clip padded_lower" in out
    assert "key mapping: 354 source keys -> 301 tensors of our model (53 ignored" in out
    assert "fpn.P#_1.weight" in out and "fpn.lateral#.weight" in out
    assert "*.num_batches_tracked" in out and "(ignored: BatchNorm step counter)" in out


def test_json_and_spec_json(yhenon_pt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report_path, spec_path = tmp_path / "inspect.json", tmp_path / "spec.json"
    assert main([str(yhenon_pt), "--source", "yhenon", "--json", str(report_path), "--spec-json", str(spec_path)]) == 0
    capsys.readouterr()
    report = json.loads(report_path.read_text())
    assert report["source"] == "yhenon" and report["parameters"]["learned"] == 37_915_572
    assert sum(g["count"] for g in report["mapping"]) == 354 and len(report["unused_keys"]) == 53
    spec = ModelSpec.from_json(spec_path.read_text())
    assert spec == ModelSpec.from_dict(report["spec"])
    assert spec.anchors.generator == "yhenon" and spec.postprocess.max_detections is None


def test_help_shows_examples() -> None:
    proc = subprocess.run([sys.executable, "-m", "retinanet_trt.cli.inspect", "--help"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert "examples:" in proc.stdout and "--spec-json" in proc.stdout and "detectron2" in proc.stdout


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("trt-inspect: error: ") and err.count("\n") == 1
    return err


def test_wrong_source_is_one_line_exit_2(yhenon_pt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_line_error([str(yhenon_pt), "--source", "detectron"], capsys)
    assert "does not look like a detectron checkpoint" in err and "try --source yhenon" in err


def test_unknown_source_choice_is_one_line_exit_2(yhenon_pt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "invalid choice: 'mmdet'" in _one_line_error([str(yhenon_pt), "--source", "mmdet"], capsys)


def test_malicious_checkpoint_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class RunsCode:
        def __reduce__(self) -> tuple:
            return (print, ("ran",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.zeros(3), "x": RunsCode()}}))
    err = _one_line_error([str(path)], capsys)
    assert "refused to unpickle" in err and "builtins.print" in err


def test_missing_checkpoint_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "not found" in _one_line_error([str(tmp_path / "none.pth")], capsys)


def test_unwritable_json_path_fails_before_loading(yhenon_pt: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _one_line_error([str(yhenon_pt), "--json", str(tmp_path / "no_such_dir" / "r.json")], capsys)
