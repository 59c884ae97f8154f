"""Bad specs, artifacts whose metadata lies, and malformed COCO files: one line, exit 2, no traceback."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import onnx
import pytest

from retinanet_trt.cli import calib as calib_cli
from retinanet_trt.cli import eval as eval_cli
from retinanet_trt.cli import export as export_cli
from retinanet_trt.cli import infer as infer_cli
from retinanet_trt.errors import UsageError
from retinanet_trt.plugins import __main__ as plugins_cli
from retinanet_trt.spec import ModelSpec
from retinanet_trt.spec.metadata import INFO_KEY, SPEC_KEY, read_info, read_spec
from retinanet_trt.spec.presets import PRESETS, get_preset


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "%|" not in ln]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def _set(d: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(d)
    *parents, leaf = dotted.split(".")
    node = out
    for key in parents:
        node = node[key]
    node[leaf] = value
    return out


# ------------------------------------------------------------------------------- the spec
BAD_FIELDS = [
    ("head.num_classes", "5", "must be an integer"),
    ("head.num_classes", 1.5, "must be an integer"),
    ("head.num_classes", 0, "head.num_classes=0"),
    ("head.num_convs", -1, "head.num_convs=-1"),
    ("head.prior_prob", 1.0, "strictly between 0 and 1"),
    ("backbone.stride_in_1x1", "yes", "must be true/false"),
    ("preprocess.mean", [1, 2, "x"], "list of numbers"),
    ("preprocess.min_size", True, "must be an integer"),
    ("preprocess.max_size", 10, "between min_size"),
    ("preprocess.size_divisibility", 0, "size_divisibility=0"),
    ("postprocess.nms_iou", float("nan"), "must be a number"),
    ("postprocess.nms_iou", 0.0, "in (0, 1]"),
    ("postprocess.score_thresh", [0.05, 0.05, 0.05, 0.05, 1.5], "score_thresh"),
    ("postprocess.max_detections", 0, "max_detections=0"),
    ("postprocess.topk_per_level", -5, "topk_per_level=-5"),
    ("anchors.sizes", [[-1.0, 2.0, 3.0]] * 5, "anchors.sizes"),
    ("anchors.strides", [8, 16, 0, 64, 128], "anchors.strides"),
    ("box_coder.weights", [1.0, 1.0, 1.0], "box_coder.weights"),
    ("fpn.out_channels", "256", "must be an integer"),
    ("version", 99, "spec version"),
]


@pytest.mark.parametrize("field, value, message", BAD_FIELDS)
def test_every_bad_field_is_named_by_the_loader(field: str, value: Any, message: str) -> None:
    with pytest.raises(UsageError, match=None) as info:
        ModelSpec.from_dict(_set(get_preset("tiny").to_dict(), field, value))
    assert message in str(info.value), str(info.value)
    assert field.split(".")[-1] in str(info.value)


def test_ints_are_fine_where_floats_are_declared_and_presets_all_pass() -> None:
    spec = ModelSpec.from_dict(_set(get_preset("tiny").to_dict(), "postprocess.nms_iou", 1))
    assert spec.postprocess.nms_iou == 1.0 and isinstance(spec.postprocess.nms_iou, float)
    for name in PRESETS:
        ModelSpec.from_json(get_preset(name).to_json())  # round trip through the checks


@pytest.mark.parametrize("field, value, message", BAD_FIELDS[:4])
def test_export_with_a_bad_spec_file_is_one_line(field: str, value: Any, message: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    spec_file = tmp_path / "s.json"
    spec_file.write_text(json.dumps(_set(get_preset("tiny").to_dict(), field, value)))
    assert export_cli.main(["--spec", str(spec_file), "--random-init", "-o", str(tmp_path / "m.onnx")]) == 2
    assert message in _err_line(capsys)
    assert not (tmp_path / "m.onnx").exists()


# --------------------------------------------------------------------- artifact vs its graph
def _with_metadata(src: Path, dst: Path, spec_json: str | None = None, info_json: str | None = None) -> Path:
    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if spec_json is not None and prop.key == SPEC_KEY:
            prop.value = spec_json
        if info_json is not None and prop.key == INFO_KEY:
            prop.value = info_json
    onnx.save(model, str(dst))
    return dst


def _spec_dict(tiny_onnx) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return read_spec(tiny_onnx[0]).to_dict()


def test_a_spec_with_other_class_count_than_the_graph_is_refused(tiny_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = _set(_spec_dict(tiny_onnx), "head.num_classes", 3)
    spec["postprocess"]["class_names"] = spec["postprocess"]["class_names"][:3]
    spec["postprocess"]["label_map"] = spec["postprocess"]["label_map"][:3]
    path = _with_metadata(tiny_onnx[0], tmp_path / "m.onnx", json.dumps(spec))
    with pytest.raises(UsageError, match=r"cls_p3 has 45 channels, the spec's head needs 27"):
        read_spec(path)


def test_a_spec_with_fewer_levels_than_the_graph_is_refused(tiny_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = _spec_dict(tiny_onnx)
    spec["fpn"]["levels"] = [3, 4, 5, 6]
    for key in ("sizes", "strides"):
        spec["anchors"][key] = spec["anchors"][key][:4]
    spec["postprocess"]["score_thresh"] = spec["postprocess"]["score_thresh"][:4]
    path = _with_metadata(tiny_onnx[0], tmp_path / "m.onnx", json.dumps(spec))
    with pytest.raises(UsageError, match=r"FPN levels \[3, 4, 5, 6\] but the graph has outputs .*cls_p7"):
        read_spec(path)


@pytest.mark.parametrize("spec_json, info_json, message", [
    ('{"head": ', None, "stored spec is invalid"),
    (None, '{"precision": ', "not valid JSON"),
    (None, '[1, 2]', "not a JSON object"),
])
def test_corrupt_metadata_is_a_usage_error(spec_json, info_json, message, tiny_onnx, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = _with_metadata(tiny_onnx[0], tmp_path / "m.onnx", spec_json, info_json)
    with pytest.raises(UsageError, match=message):
        read_info(path) if info_json else read_spec(path)
    if info_json is None:  # a runner reads the spec
        image = tmp_path / "x.png"
        from PIL import Image

        Image.new("RGB", (64, 48)).save(image)
        assert infer_cli.main([str(path), str(image), "--out", str(tmp_path / "o")]) == 2
    else:  # the converter reads the info
        assert calib_cli.main([str(path), "--fp16", "-o", str(tmp_path / "o.onnx")]) == 2
    assert message in _err_line(capsys)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.onnx").exists()


def test_a_truncated_onnx_given_to_the_plugins_tool_is_one_line(tiny_onnx, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(tiny_onnx[0].read_bytes()[:5000])
    assert plugins_cli.main([str(cut), "-o", str(tmp_path / "e2e.onnx")]) == 2
    assert "not a readable ONNX file" in _err_line(capsys)
    assert not (tmp_path / "e2e.onnx").exists()


# ------------------------------------------------------------------------------- trt-eval
def _coco(tmp_path: Path, **overrides: Any) -> Path:
    from PIL import Image

    Image.new("RGB", (64, 48), (90, 90, 90)).save(tmp_path / "a.png")
    data: dict[str, Any] = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "circle"}],
    }
    data.update(overrides)
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("overrides, extra, message", [
    ({"categories": None}, [], "no 'categories' list"),
    ({"annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20]}]}, [], "is not [x, y, width, height]"),
    ({"annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, -2, 3]}]}, [], "width, height >= 0"),
    ({"annotations": [{"id": 1, "image_id": 99, "category_id": 1, "bbox": [4, 4, 20, 20]}]}, [], "refer to the 1 listed"),
    ({"annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [4, 4, 20, 20]}]}, [], "not among the categories"),
    ({"annotations": []}, [], "have no annotations"),
    ({}, ["--max-images", "-1"], "--max-images -1"),
    ({}, ["--max-images", "0"], "--max-images 0"),
])
def test_trt_eval_bad_annotations_and_counts(overrides, extra, message, tiny_onnx, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    ann = _coco(tmp_path, **overrides)
    argv = [str(tiny_onnx[0]), "--images", str(tmp_path), "--annotations", str(ann), *extra, "--json", str(tmp_path / "ap.json")]
    assert eval_cli.main(argv) == 2
    assert message in _err_line(capsys)
    assert not (tmp_path / "ap.json").exists()


def test_trt_eval_on_a_valid_minimal_set_works(tiny_onnx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ann = _coco(tmp_path)
    assert eval_cli.main([str(tiny_onnx[0]), "--images", str(tmp_path), "--annotations", str(ann),
                          "--json", str(tmp_path / "ap.json")]) == 0
    stats = json.loads((tmp_path / "ap.json").read_text())
    assert stats["num_images"] == 1 and 0.0 <= stats["AP"] <= 1.0


def test_an_exclusion_that_matches_nothing_is_refused_before_calibrating(tiny_onnx, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from retinanet_trt.calib import int8

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("calibrated before checking --exclude")

    monkeypatch.setattr(int8, "calibrate", never)
    out = tmp_path / "m.int8.onnx"
    assert calib_cli.main([str(tiny_onnx[0]), "--int8", "--calib", "demo", "--exclude", "p9/nothing*", "-o", str(out)]) == 2
    assert "matches no node" in _err_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("name", ["m.onnx", "renamed.pth"])
def test_an_onnx_file_given_as_a_checkpoint_says_what_it_is(name: str, tiny_onnx, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from retinanet_trt.cli import inspect as inspect_cli

    path = tmp_path / name
    path.write_bytes(tiny_onnx[0].read_bytes())
    assert inspect_cli.main([str(path)]) == 2
    assert "is an ONNX model, not a training checkpoint" in _err_line(capsys)
    assert export_cli.main([str(path), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "is an ONNX model" in _err_line(capsys)


@pytest.mark.parametrize("argv, flag", [
    (["eval", "--demo", "--demo-images", "100000000"], "--demo-images 100000000"),
    (["eval", "--demo", "--demo-images", "0"], "--demo-images 0"),
    (["calib", "--int8", "--calib", "demo", "--calib-images", "100000000"], "--calib-images 100000000"),
    (["calib", "--int8", "--calib", "demo", "--eval-images", "0"], "--eval-images 0"),
])
def test_image_counts_are_bounded_before_any_work(argv: list[str], flag: str, tiny_onnx, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    main = eval_cli.main if argv[0] == "eval" else calib_cli.main
    assert main([str(tiny_onnx[0]), *argv[1:]]) == 2
    assert f"{flag}: give 1..10000" in _err_line(capsys)


@pytest.mark.parametrize("main_name, argv", [
    ("export", ["--demo", "-o", "{tmp}/x.onnx", "--seed", "-5"]),
    ("calib", ["{onnx}", "--int8", "--calib", "demo", "--seed", "-1"]),
    ("eval", ["{onnx}", "--demo", "--seed", "99999999999"]),
])
def test_a_seed_out_of_numpy_range_is_a_usage_error(main_name: str, argv: list[str], tiny_onnx, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    main = {"export": export_cli.main, "calib": calib_cli.main, "eval": eval_cli.main}[main_name]
    assert main([a.format(tmp=tmp_path, onnx=tiny_onnx[0]) for a in argv]) == 2
    assert "a seed is between 0 and 4294967295" in _err_line(capsys)


def test_an_onnx_with_a_tensorrt_plugin_is_one_line_on_onnx_runtime(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "e2e_trt.onnx"
    assert export_cli.main(["--demo", "--end2end", "--nms", "efficientnms", "-o", str(out), "--quiet"]) == 0
    capsys.readouterr()
    from PIL import Image

    Image.new("RGB", (64, 48)).save(tmp_path / "x.png")
    assert infer_cli.main([str(out), str(tmp_path / "x.png"), "-o", str(tmp_path / "o")]) == 2
    assert "uses a TensorRT plugin: run it with --backend trt" in _err_line(capsys)


def test_a_tiny_file_declaring_a_huge_tensor_is_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Zip-bomb-like: a 0-stride tensor stores one value but claims 1.9e9 of them (9.1 M classes)."""
    import checkpoint_factory as cf
    import torch

    from retinanet_trt.cli import inspect as inspect_cli

    sd = {k: torch.from_numpy(v) for k, v in cf.synthesise("torchvision_v1", seed=0).items()}
    sd["head.classification_head.cls_logits.weight"] = torch.zeros(1).expand(819 * 100000, 256, 3, 3)
    path = tmp_path / "bomb.pth"
    torch.save(sd, path)
    assert inspect_cli.main([str(path)]) == 2
    line = _err_line(capsys)
    assert "head.num_classes=9100000 must be between 1 and 100000" in line and len(line) < 400
