"""Exports that fit their use: the resize kept at a fixed input, --resize/--resize-fixed, --set,
--class-names and a partial --spec over a checkpoint, all validated like a spec file."""

from __future__ import annotations

import json
from pathlib import Path

import checkpoint_factory as cf
import pytest

from retinanet_trt.cli import export as export_cli
from retinanet_trt.errors import UsageError
from retinanet_trt.spec.metadata import read_spec
from retinanet_trt.spec.overrides import merge, parse_set
from retinanet_trt.spec.presets import DEMO_CLASSES, get_preset


def _export(tmp_path: Path, *argv: str) -> Path:
    out = tmp_path / "m.onnx"
    assert export_cli.main([*argv, "-o", str(out), "--quiet"]) == 0
    return out


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def test_parse_set_reads_json_values_and_bare_strings() -> None:
    assert parse_set("postprocess.nms_iou=0.6") == {"postprocess": {"nms_iou": 0.6}}
    assert parse_set("preprocess.channel_order=BGR") == {"preprocess": {"channel_order": "BGR"}}
    assert parse_set("postprocess.max_detections=null") == {"postprocess": {"max_detections": None}}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_set("postprocess.nms_iou")
    with pytest.raises(UsageError, match=r"unknown field spec.postprocess.nms_io"):
        merge(get_preset("tiny").to_dict(), parse_set("postprocess.nms_io=0.5"))


def test_a_fixed_input_export_keeps_the_resize_and_reports_what_stays_exact(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """--input-size never rewrites the framework's resize (issue 17): the spec keeps min/max sizes,
    the report states the resize kept and the aspect range that stays exact; --resize still wins."""
    tiny = get_preset("tiny").preprocess
    out = tmp_path / "m.onnx"
    report = tmp_path / "r.json"
    assert export_cli.main(["--preset", "tiny", "--random-init", "--input-size", "128", "160", "-o", str(out),
                            "--json", str(report)]) == 0
    pre = read_spec(out).preprocess
    assert (pre.resize, pre.min_size, pre.max_size, pre.oversize) == ("shortest_edge", tiny.min_size, tiny.max_size, "shrink")
    fit = json.loads(report.read_text())["resize_fit"]
    assert fit["input_hw"] == [128, 160] and f"shortest edge {tiny.min_size}" in fit["framework_resize"]
    assert "keeps the framework's resize" in capsys.readouterr().out
    chosen = read_spec(_export(tmp_path, "--preset", "tiny", "--random-init", "--input-size", "128", "160",
                               "--resize", "96", "128", "--oversize", "refuse")).preprocess
    assert (chosen.min_size, chosen.max_size, chosen.oversize) == (96, 128, "refuse")


def test_resize_fixed_set_and_class_names_on_the_demo(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("\n".join(n.upper() for n in DEMO_CLASSES) + "\n")
    spec = read_spec(_export(tmp_path, "--demo", "--resize-fixed", "200", "300", "--set", "postprocess.nms_iou=0.6",
                             "--set", "postprocess.score_thresh=[0.3,0.3,0.3,0.3,0.3]", "--class-names", str(names),
                             "--input-size", "224", "320"))
    assert spec.preprocess.resize == "fixed" and spec.preprocess.fixed_size == [200, 300]
    assert spec.postprocess.nms_iou == 0.6 and spec.postprocess.score_thresh == [0.3] * 5
    assert spec.class_names() == [n.upper() for n in DEMO_CLASSES]


def test_coco_json_class_names_bring_their_ids(tmp_path: Path) -> None:
    coco = tmp_path / "ann.json"
    cats = [{"id": 10 + 3 * i, "name": f"c{i}"} for i in range(len(DEMO_CLASSES))]
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": cats[::-1]}))
    spec = read_spec(_export(tmp_path, "--demo", "--class-names", str(coco)))
    assert spec.class_names() == [c["name"] for c in cats] and spec.label_ids() == [c["id"] for c in cats]


@pytest.mark.parametrize("argv, message", [
    (["--demo", "--set", "head.num_classes=3"], "changes head, which the weights fix"),
    (["--demo", "--set", "postprocess.nms_iou=2"], "nms_iou=2"),
    (["--demo", "--set", "postprocess.nms_iou=abc"], "must be a number"),
    (["--demo", "--set", "preprocess.nope=1"], "unknown field spec.preprocess.nope"),
    (["--demo", "--resize", "64", "32"], "between min_size"),
    (["--demo", "--resize", "64", "96", "--resize-fixed", "64", "96"], "give one"),
    (["--demo", "--class-names", "{tmp}/three.txt"], "has 3 names, the model has 5 classes"),
    (["--demo", "--class-names", "{tmp}/missing.txt"], "not found"),
])
def test_bad_overrides_are_one_line(argv: list[str], message: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert export_cli.main([*argv, "-o", str(tmp_path / "m.onnx")]) == 2
    assert message in _err(capsys)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_a_partial_spec_over_a_checkpoint(tmp_path: Path) -> None:
    ck = cf.save("detectron2", cf.synthesise("detectron2", seed=0), tmp_path / "model_final.pth")
    partial = tmp_path / "over.json"
    partial.write_text(json.dumps({"postprocess": {"max_detections": 50, "nms_iou": 0.55}, "name": "my_detector"}))
    spec = read_spec(_export(tmp_path, str(ck), "--spec", str(partial), "--input-size", "128", "160", "--no-simplify"))
    assert spec.name == "my_detector" and spec.postprocess.max_detections == 50 and spec.postprocess.nms_iou == 0.55
    assert spec.source == "detectron2" and spec.backbone.stride_in_1x1  # the rest is the checkpoint's own
