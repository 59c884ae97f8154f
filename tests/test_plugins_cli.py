"""trt-export --end2end [--nms onnx|efficientnms]."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from retinanet_trt.cli import export as export_cli
from retinanet_trt.spec.metadata import read_info


@pytest.mark.parametrize("nms", [None, "efficientnms"])
def test_export_end2end(tmp_path: Path, nms: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    out, report = tmp_path / "e2e.onnx", tmp_path / "report.json"
    argv = ["--preset", "tiny", "--random-init", "--input-size", "128", "160", "--end2end", "-o", str(out),
            "--report", str(report), "--quiet"] + (["--nms", nms] if nms else [])
    assert export_cli.main(argv) == 0
    model = onnx.load(out)
    assert [o.name for o in model.graph.output] == ["num_dets", "boxes", "scores", "labels"]
    info = read_info(model)
    assert info["end2end"] is True and info["nms"] == (nms or "onnx")
    e2e = json.loads(report.read_text())["end2end"]
    assert e2e["check"]["passed"] is (None if nms else True)
    assert "end-to-end:" in capsys.readouterr().out


def test_nms_needs_end2end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--preset", "tiny", "--random-init", "--nms", "onnx", "-o", str(tmp_path / "m.onnx")]
    assert export_cli.main(argv) == 2
    assert "add --end2end" in capsys.readouterr().err


def test_append_to_an_existing_onnx(tiny_onnx, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from retinanet_trt.plugins.__main__ import main

    out, report = tmp_path / "e2e.onnx", tmp_path / "e2e.json"
    assert main([str(tiny_onnx[0]), "-o", str(out), "--report", str(report)]) == 0
    assert read_info(onnx.load(out))["end2end_anchors"] == "computed"
    assert json.loads(report.read_text())["check"]["passed"] is True
    assert "not exact:" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert main([str(out), "-o", str(tmp_path / "again.onnx")]) == 2  # already end-to-end
    assert "already ends" in capsys.readouterr().err
