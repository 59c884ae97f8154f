"""trt-calib's accuracy budget (issue 18, item 3): --min-sqnr / --max-drop keep the fewest layers in
FP32 (the shortest measured prefix of the per-layer sensitivity ranking) that meet the budget,
report which and what each costs, say so clearly when the budget cannot be met (exit 3), and
refuse a budget that cannot apply in one line before any work (exit 2, nothing written)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from retinanet_trt.calib import budget, int8, sensitivity
from retinanet_trt.calib.budget import Budget
from retinanet_trt.calib.convert import ConvertOptions, convert
from retinanet_trt.cli.calib import EXIT_BUDGET_NOT_MET, main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny preset, random weights, static 128x160 input (plain INT8: worst held-out SQNR ~28 dB)."""
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx
    from retinanet_trt.model import build_model
    from retinanet_trt.spec.presets import get_preset

    spec = get_preset("tiny")
    spec.preprocess.min_size, spec.preprocess.max_size = 128, 160
    path = tmp_path_factory.mktemp("budget") / "tiny.onnx"
    export_onnx(build_model(spec, seed=0), spec, path, ExportOptions(input_hw=(128, 160)))
    return path


def _opts(tiny: Path, **kw: Any) -> ConvertOptions:
    base: dict[str, Any] = {"calib": "demo", "calib_images": 4, "progress": False, "evaluate_map": False,
                            "cache_dir": tiny.parent / "cache"}
    return ConvertOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def plain(tiny: Path) -> dict:
    return convert(tiny, "int8", tiny.with_name("plain.int8.onnx"), _opts(tiny))


@pytest.fixture(scope="module")
def met(tiny: Path, plain: dict) -> tuple[Path, dict, float]:
    target = min(plain["sqnr_db"].values()) + 1.5  # out of plain INT8's reach, within a few FP32 layers'
    out = tiny.with_name("budget.int8.onnx")
    return out, convert(tiny, "int8", out, _opts(tiny, budget=Budget(min_sqnr_db=target))), target


def test_budget_met_with_the_fewest_measured_layers(met: tuple[Path, dict, float], plain: dict) -> None:
    out, report, target = met
    b = report["budget"]
    assert b["met"] and b["kept"] and "note" not in b
    assert b["plain"]["worst_sqnr_db"] == pytest.approx(min(plain["sqnr_db"].values()))
    assert b["plain"]["worst_sqnr_db"] < target
    assert b["final"]["worst_sqnr_db"] >= target
    # the file written is the one the search measured, in the same arithmetic
    assert min(report["sqnr_db"].values()) == pytest.approx(b["final"]["worst_sqnr_db"], abs=1e-9)
    assert b["arithmetic"] == report["arithmetic"]
    kept = [k["layer"] for k in b["kept"]]
    assert kept == [r["layer"] for r in b["ranking"][: len(kept)]]  # a prefix of the sensitivity ranking
    # one layer fewer (the next shorter prefix measured) does not meet the budget
    shorter = [s for s in b["steps"] if s["layers_kept"] < len(kept)]
    assert shorter and not any(s["met"] for s in shorter)
    assert any(s["layers_kept"] == len(kept) - 1 for s in shorter) or len(kept) == 1
    for k in b["kept"]:
        assert k["latency_class"] == "fp32" and k["group"] and k["op"] == "Conv" and k["params"] > 0
        assert 0 <= k["macs_share"] <= 1 and k["sensitivity_rank"] >= 1
    assert 0 < b["kept_macs_share"] <= 1
    # the kept layers compute in FP32 in the file: their weights are float initializers, not dequantized
    model = onnx.load(str(out))
    consts = {t.name for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    assert all(nodes[k].input[1] in consts for k in kept)
    assert set(kept) <= set(report["exclusions"]) and report["lint"]["passed"]


def test_rerun_to_another_output_reuses_the_search(tiny: Path, met: tuple[Path, dict, float], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out, report, target = met

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the budget search ran again")

    monkeypatch.setattr(budget, "search", fail)
    again = convert(tiny, "int8", tmp_path / "copy.onnx", _opts(tiny, budget=Budget(min_sqnr_db=target)))
    assert again["cache"]["report_reused"] and again["budget"]["kept"] == report["budget"]["kept"]
    assert (tmp_path / "copy.onnx").read_bytes() == out.read_bytes()
    # another budget is another report
    monkeypatch.undo()
    other = convert(tiny, "int8", tmp_path / "copy.onnx", _opts(tiny, budget=Budget(min_sqnr_db=target - 1.0)))
    assert not other["cache"]["report_reused"] and "budget" in other["cache"]["report_note"]


def test_unreachable_budget_says_so_and_exits_3(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, js = tmp_path / "m.int8.onnx", tmp_path / "r.json"
    code = main([str(tiny), "--int8", "--calib", "demo", "--calib-images", "4", "--no-map", "--quiet", "--min-sqnr", "150",
                 "--max-kept", "2", "--cache-dir", str(tiny.parent / "cache"), "-o", str(out), "--json", str(js)])
    printed = capsys.readouterr()
    assert code == EXIT_BUDGET_NOT_MET
    assert "NOT met" in printed.out and "kept layer" in printed.out
    err = printed.err.strip().splitlines()
    assert len(err) == 1 and "budget not met" in err[0] and "--max-kept" in err[0]
    import json

    report = json.loads(js.read_text())
    b = report["budget"]
    assert not b["met"] and len(b["kept"]) <= 2 and report["lint"]["passed"] and out.is_file()
    assert b["final"]["worst_sqnr_db"] == max(s["worst_sqnr_db"] for s in b["steps"])  # the closest one measured


@pytest.mark.parametrize(("extra", "needle"), [
    (["--max-drop", "0.001"], "no annotations"),  # a plain image folder
    (["--max-drop", "0.001", "--no-map"], "--no-map"),
    (["--max-drop", "5"], "fraction"),
    (["--max-drop", "nan"], "fraction"),
    (["--min-sqnr", "-3"], "dB"),
    (["--max-kept", "3"], "--max-drop"),
    (["--keep-as", "fp16"], "--max-drop"),
    (["--min-sqnr", "20", "--max-kept", "0"], "--max-kept"),
])
def test_budget_that_cannot_apply_is_one_line_before_any_work(tiny: Path, tmp_path: Path, extra: list[str], needle: str,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.zeros((120, 150, 3), np.uint8)).save(folder / "a.png")

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("calibrated before refusing the budget")

    monkeypatch.setattr(int8, "calibrate", fail)
    out = tmp_path / "m.int8.onnx"
    assert main([str(tiny), "--int8", "--calib", str(folder), "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_kept_layers_in_fp16_meet_the_budget_with_fp16_weights(tiny: Path, met: tuple[Path, dict, float]) -> None:
    """--keep-as fp16: the same search, the kept layers computing in FP16 (own FP16 weights between
    Casts) in the file written, which scores what the search measured."""
    _, fp32_report, target = met
    out = tiny.with_name("budget.fp16kept.int8.onnx")
    report = convert(tiny, "int8", out, _opts(tiny, budget=Budget(min_sqnr_db=target, keep_as="fp16")))
    b = report["budget"]
    assert b["met"] and b["keep_as"] == "fp16" and b["kept_latency_class"] == "fp16"
    assert b["final"]["worst_sqnr_db"] >= target
    assert min(report["sqnr_db"].values()) == pytest.approx(b["final"]["worst_sqnr_db"], abs=1e-9)
    # the ranking is INT8's, whatever the kept layers compute in
    assert [r["layer"] for r in b["ranking"]] == [r["layer"] for r in fp32_report["budget"]["ranking"]]
    assert report["lint"]["passed"]
    kept = [k["layer"] for k in b["kept"]]
    assert all(k["latency_class"] == "fp16" for k in b["kept"]) and not set(kept) & set(report["exclusions"])
    model = onnx.load(str(out))
    halves = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in (n for n in model.graph.node if n.name in kept):
        assert node.input[1] in halves
        assert producers[node.input[0]].op_type == "Cast"
    from retinanet_trt.spec.metadata import read_info

    assert sorted(read_info(model)["kept_fp16"]) == sorted(kept)


def test_fp16_takes_no_budget(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tiny), "--fp16", "--min-sqnr", "40", "-o", str(tmp_path / "m.fp16.onnx")]) == 2
    assert "--int8 only" in capsys.readouterr().err


def test_shortest_prefix_doubles_then_bisects() -> None:
    order = [f"l{i}" for i in range(20)]
    steps: list[dict[str, Any]] = []
    asked: list[int] = []

    def measure(kept: list[str], why: str) -> dict[str, Any]:
        asked.append(len(kept))
        m = {"kept": list(kept), "worst_sqnr_db": 20.0 + len(kept), "met": len(kept) >= 7}
        steps.append(m)
        return m

    found = budget._shortest_prefix(order, measure, Budget(min_sqnr_db=27.0), steps)
    assert len(found["kept"]) == 7 and found["met"]
    assert asked[:4] == [1, 2, 4, 8] and len(asked) <= 8
    # never met: the closest file measured
    steps.clear()
    never = budget._shortest_prefix(order[:5], lambda k, w: measure(k, w) | {"met": False}, Budget(min_sqnr_db=99.0), steps)
    assert not never["met"] and len(never["kept"]) == 5


def test_detection_masks_pick_the_anchors_fp32_detects() -> None:
    a, k = 2, 3
    cls = np.full((1, a * k, 2, 2), -9.0, np.float32)
    cls[0, 1 * k + 2, 0, 1] = 1.0  # anchor 1, class 2, at (0, 1): above the floor
    box = np.arange(a * 4 * 4, dtype=np.float32).reshape(1, a * 4, 2, 2)
    ref = [{"cls_p3": cls, "box_p3": box}]
    masks = sensitivity.detection_masks(ref, a, k, logit_floor=-3.0)
    assert masks[0]["cls_p3"].sum() == k and masks[0]["cls_p3"][0, k:2 * k, 0, 1].all()
    assert masks[0]["box_p3"].sum() == 4 and masks[0]["box_p3"][0, 4:8, 0, 1].all()
    noisy = [{"cls_p3": cls + 0.1, "box_p3": box}]  # noise everywhere; only the detected anchor counts
    noise = sensitivity.masked_noise(ref, noisy, masks)
    assert noise == pytest.approx(3 * 0.01 / (1.0 + 81.0 + 81.0), rel=1e-5)  # float32 logits
    assert budget._logit_floor(_spec_with(0.05)) == pytest.approx(np.log(0.05 / 0.95))


def _spec_with(thresh: float):  # type: ignore[no-untyped-def]
    from retinanet_trt.spec.presets import get_preset

    spec = get_preset("tiny")
    spec.postprocess.score_thresh = [thresh] * len(spec.postprocess.score_thresh)
    return spec
