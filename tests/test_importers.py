"""Importers: checkpoints synthesised with each framework's exact R50 key names and shapes import
with every key consumed; our model reproduces the source architecture's raw outputs; our
post-process reproduces each framework's own detections (independent references in
framework_reference.py); the imported models export with ONNX parity; bad inputs give one clear
message."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import checkpoint_factory as cf
import framework_reference as ref
import numpy as np
import pytest
import torch

from retinanet_trt.errors import UsageError
from retinanet_trt.export.pipeline import ExportOptions, export_onnx
from retinanet_trt.importers import IMPORTERS, ImportResult, count_parameters, import_checkpoint
from retinanet_trt.model.retinanet import RetinaNet, output_names
from retinanet_trt.runtime.postprocess import postprocess
from retinanet_trt.runtime.types import Detections, ImageMeta


@dataclass(frozen=True)
class Case:
    name: str
    framework: str
    ext: str
    variant: tuple[tuple[str, bool], ...] = ()
    fmt: tuple[tuple[str, bool], ...] = ()


CASES = [
    Case("torchvision_v1_legacy", "torchvision_v1", ".pth", (("legacy", True),)),
    Case("torchvision_v2", "torchvision_v2", ".pth"),
    Case("detectron2_pkl", "detectron2", ".pkl"),
    Case("maskrcnn_benchmark_module_c5", "maskrcnn_benchmark", ".pth", fmt=(("module", True),)),
    Case("maskrcnn_benchmark_p5", "maskrcnn_benchmark", ".pth", (("p6_from_p5", True),)),
    Case("yhenon", "yhenon", ".pt"),
    Case("detectron", "detectron", ".pkl"),
]

# (input_hw, [(resized_hw, original_hw) per image]): odd P5 grids (96 = 3 x 32) give torchvision
# non-power-of-two P6/P7 strides; originals are exact multiples of the resized sizes because
# Detectron and yhenon rescale by one factor for both axes; one entry is a batch of two.
SIZES_32 = [
    ((96, 160), [((90, 150), (180, 300))]),
    ((128, 128), [((128, 120), (256, 240)), ((100, 128), (200, 256))]),
    ((160, 224), [((150, 224), (300, 448))]),
]
SIZES_128 = [  # Detectron pads to 128
    ((128, 256), [((100, 200), (200, 400))]),
    ((256, 128), [((240, 120), (300, 150)), ((256, 100), (256, 100))]),
]

EXPECTED_SOURCE = {"torchvision_v1": "torchvision", "torchvision_v2": "torchvision"}
IGNORED_ROLES = {"count", "anchors", "momentum"}  # BN step counters, mb cell anchors, Detectron momenta


@dataclass
class Imported:
    case: Case
    keys: cf.KeySpec
    source_sd: dict[str, torch.Tensor]
    result: ImportResult
    model: RetinaNet
    import_s: float


@pytest.fixture(scope="class")
def imported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Imported:
    case: Case = request.param
    keys = cf.key_spec(case.framework, **dict(case.variant))
    values = cf.random_values(keys, seed=sum(map(ord, case.name)), dw_weight=cf.DW_WEIGHT[case.framework])
    path = cf.save(case.framework, values, tmp_path_factory.mktemp(case.name) / f"model{case.ext}", **dict(case.fmt))
    t0 = time.perf_counter()
    result = import_checkpoint(path)
    import_s = time.perf_counter() - t0
    model = result.build_model()
    source_sd = {k: torch.from_numpy(v) for k, v in values.items()}
    return Imported(case, keys, source_sd, result, model, import_s)


def _outputs(model: RetinaNet, x: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {n: t.numpy() for n, t in zip(output_names(model.spec), model(x), strict=True)}


def assert_same_detections(ours: Detections, theirs: ref.RefDetections, what: str) -> tuple[float, float]:
    """Same count and labels; each reference detection matched one-to-one to one of ours with the same
    label, box within 1e-3 and score within 1e-5. Returns (max box diff, max score diff)."""
    assert len(ours) == len(theirs.scores), f"{what}: {len(ours)} detections, reference {len(theirs.scores)}"
    assert sorted(ours.labels.tolist()) == sorted(theirs.labels.tolist()), f"{what}: label multisets differ"
    box_err = score_err = 0.0
    for label in np.unique(theirs.labels):
        mine = np.flatnonzero(ours.labels == label)
        used = np.zeros(len(mine), dtype=bool)
        for j in np.flatnonzero(theirs.labels == label):
            d_box = np.abs(ours.boxes[mine] - theirs.boxes[j]).max(axis=1)
            d_score = np.abs(ours.scores[mine] - theirs.scores[j])
            ok = np.flatnonzero(~used & (d_box <= 1e-3) & (d_score <= 1e-5))
            assert ok.size, (f"{what}: reference detection label {label} score {theirs.scores[j]:.6f} box "
                             f"{theirs.boxes[j]} has no match (nearest box diff {d_box.min():.3g})")
            used[ok[0]] = True
            box_err, score_err = max(box_err, d_box[ok[0]]), max(score_err, d_score[ok[0]])
    return box_err, score_err


@pytest.mark.slow
@pytest.mark.parametrize("imported", CASES, indirect=True, ids=[c.name for c in CASES], scope="class")
class TestFrameworks:
    def test_every_key_consumed(self, imported: Imported) -> None:
        case, result = imported.case, imported.result
        assert result.source == EXPECTED_SOURCE.get(case.framework, case.framework)
        assert result.notes[0].startswith(f"auto-detected source {result.source}")
        ignored = sorted(k for k, (role, _) in imported.keys.items() if role in IGNORED_ROLES)
        assert sorted(result.unused_keys) == ignored
        assert sum(g.count for g in result.mapping_summary) == len(imported.keys)
        assert len(result.state_dict) == len(imported.model.state_dict())
        # Every learned tensor of the facts sheet's tables is a parameter of ours, and nothing more.
        learned, _ = count_parameters(result.spec)
        assert learned == cf.count_learned(imported.keys)
        print(f"\n{case.name}: import {imported.import_s:.2f} s, {learned:,} parameters, "
              f"{len(result.unused_keys)} ignored keys")

    def test_spec_conventions(self, imported: Imported) -> None:
        spec, fw = imported.result.spec, imported.case.framework
        assert spec.fpn.p6_from == ("p5" if fw == "torchvision_v1" or "p5" in imported.case.name else "c5")
        assert spec.backbone.stride_in_1x1 == (fw in ("detectron2", "maskrcnn_benchmark", "detectron"))
        assert spec.head.num_classes == (91 if fw.startswith("torchvision") else 80)
        assert spec.box_coder.weights == ([10.0, 10.0, 5.0, 5.0] if fw in ("maskrcnn_benchmark", "yhenon") else [1.0] * 4)
        assert spec.postprocess.label_map[:3] == ([0, 1, 2] if fw.startswith("torchvision") else [1, 2, 3])

    def test_forward_matches_source_architecture(self, imported: Imported) -> None:
        """Our model on the imported weights == the source architecture on the source-named weights."""
        case = imported.case
        net = ref.source_net(case.framework, legacy=dict(case.variant).get("legacy", False),
                             p6_from=imported.result.spec.fpn.p6_from)
        x = torch.randn(1, 3, 128, 256, generator=torch.Generator().manual_seed(1))
        ours = _outputs(imported.model, x)
        theirs = ref.reference_forward(imported.source_sd, net, x)
        worst = max(float(np.abs(ours[n] - theirs[n].numpy()).max() / (np.abs(theirs[n].numpy()).max() + 1e-12))
                    for n in ours)
        print(f"\n{case.name}: max |ours - source| / max |source| over outputs = {worst:.2e}")
        assert worst < 1e-5

    def test_detections_match_framework_reference(self, imported: Imported) -> None:
        case, spec, model = imported.case, imported.result.spec, imported.model
        sizes = SIZES_128 if case.framework == "detectron" else SIZES_32
        gen = torch.Generator().manual_seed(2)
        box_err = score_err = 0.0
        counts = []
        for input_hw, images in sizes:
            x = torch.randn(len(images), 3, *input_hw, generator=gen)
            outs = _outputs(model, x)
            metas = [ImageMeta(original_hw=o, resized_hw=r, input_hw=input_hw) for r, o in images]
            ours = postprocess(outs, spec, metas)
            for n, meta in enumerate(metas):
                theirs = ref.reference_detections(
                    case.framework, [outs[f"cls_p{lv}"][n] for lv in spec.levels],
                    [outs[f"box_p{lv}"][n] for lv in spec.levels], meta, spec.head.num_classes)
                b, s = assert_same_detections(ours[n], theirs, f"{case.name} {input_hw} image {n}")
                box_err, score_err = max(box_err, b), max(score_err, s)
                counts.append(len(ours[n]))
        assert min(counts) > 0
        print(f"\n{case.name}: detections per image {counts}, max box diff {box_err:.2e}, max score diff {score_err:.2e}")

    def test_export_parity(self, imported: Imported, tmp_path: Path) -> None:
        t0 = time.perf_counter()
        report = export_onnx(imported.model, imported.result.spec, tmp_path / "m.onnx", ExportOptions(input_hw=(128, 128)))
        assert report["passed"] and (tmp_path / "m.onnx").is_file()
        print(f"\n{imported.case.name}: export parity worst max_rel {report['worst_max_rel']:.2e} "
              f"({report['worst_output']}), {time.perf_counter() - t0:.1f} s")


@pytest.mark.parametrize(
    ("framework", "variant", "fmt_a", "fmt_b"),
    [
        ("torchvision_v1", "layout", {"legacy": True}, {"legacy": False}),
        ("detectron2", "format", {}, {"pth": True}),
        ("maskrcnn_benchmark", "format", {}, {"module": True}),
    ],
)
def test_layouts_and_formats_give_the_same_model(framework: str, variant: str, fmt_a: dict, fmt_b: dict,
                                                 tmp_path: Path) -> None:
    """torchvision's legacy and current key layouts, detectron2's .pkl and .pth, maskrcnn-benchmark
    with and without "module.": the same weights import to the same state dict."""
    results = []
    for i, fmt in enumerate((fmt_a, fmt_b)):
        keys = cf.key_spec(framework, **fmt) if variant == "layout" else cf.key_spec(framework)
        values = cf.random_values(keys, seed=5)
        ext = ".pth" if (framework != "detectron2" or fmt.get("pth")) else ".pkl"
        path = cf.save(framework, values, tmp_path / f"m{i}{ext}", **({} if variant == "layout" else fmt))
        results.append(import_checkpoint(path))
    a, b = results
    assert a.spec == b.spec and a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


# ---------------------------------------------------------------- shapes only (no R50 weights needed)


def _zeros(keys: cf.KeySpec) -> dict[str, np.ndarray]:
    """Shape-only stand-ins: read-only zero views, no memory."""
    return {k: np.broadcast_to(np.zeros((), dtype=np.float32), shape) for k, (_, shape) in keys.items()}


def _convert(framework: str, tensors: dict[str, np.ndarray]) -> ImportResult:
    return IMPORTERS[EXPECTED_SOURCE.get(framework, framework)].convert(tensors, [])


@pytest.mark.parametrize(
    ("framework", "official"),
    # torchvision's published num_params (facts 1a/1b; v2's includes 2 x 26,560 BN affine values,
    # frozen buffers in our model) and detectron2's computed total (facts 2a).
    [("torchvision_v1", 34_014_999), ("torchvision_v2", 38_198_935 - 53_120), ("detectron2", 37_915_572)],
)
def test_parameter_counts_match_the_official_ones(framework: str, official: int) -> None:
    spec = _convert(framework, _zeros(cf.key_spec(framework))).spec
    assert count_parameters(spec)[0] == official


def test_missing_keys_are_listed_with_a_count() -> None:
    tensors = _zeros(cf.detectron2_keys())
    for k in [k for k in tensors if k.startswith("backbone.bottom_up.res4.")][:7]:
        del tensors[k]
    with pytest.raises(UsageError, match=r"7 missing \(our names\): backbone\.layer3\.0\.conv1\.conv\.weight, .*\(and 2 more\)"):
        _convert("detectron2", tensors)


def test_unexpected_keys_are_listed() -> None:
    tensors = _zeros(cf.yhenon_keys())
    tensors["classificationModel.extra.weight"] = np.zeros((3,), np.float32)
    tensors["fpn.P8.weight"] = np.zeros((3,), np.float32)
    with pytest.raises(UsageError, match=r"2 unexpected: classificationModel\.extra\.weight, fpn\.P8\.weight"):
        _convert("yhenon", tensors)


def test_wrong_shapes_are_listed_with_both_shapes() -> None:
    tensors = _zeros(cf.maskrcnn_benchmark_keys())
    tensors["backbone.fpn.fpn_layer3.weight"] = np.zeros((256, 128, 3, 3), np.float32)
    with pytest.raises(UsageError, match=r"1 wrong-shaped: backbone\.fpn\.fpn_layer3\.weight \[256, 128, 3, 3\] "
                                         r"\(expected \[256, 256, 3, 3\]\)"):
        _convert("maskrcnn_benchmark", tensors)


def test_mixed_torchvision_layouts_are_refused() -> None:
    tensors = _zeros(cf.torchvision_keys(v2=False, legacy=True))
    tensors["backbone.fpn.inner_blocks.0.0.weight"] = tensors["backbone.fpn.inner_blocks.0.weight"]
    with pytest.raises(UsageError, match=r"1 mapped twice: backbone\.fpn\.inner_blocks\.0\.weight and "
                                         r"backbone\.fpn\.inner_blocks\.0\.0\.weight -> fpn\.lateral3\.weight"):
        _convert("torchvision_v1", tensors)


def test_non_tensor_values_are_refused() -> None:
    tensors: dict = _zeros(cf.detectron_keys(momentum=False))
    tensors["fpn_6_b"] = [0.0] * 256
    with pytest.raises(UsageError, match=r"1 not tensors: fpn_6_b \(list\)"):
        _convert("detectron", tensors)


def test_nan_weights_are_refused() -> None:
    tensors = _zeros(cf.detectron_keys(momentum=False))
    tensors["retnet_cls_pred_fpn3_b"] = np.full(720, np.nan, np.float32)
    with pytest.raises(UsageError, match=r"1 tensors hold NaN or Inf: retnet_cls_pred_fpn3_b"):
        _convert("detectron", tensors)


def test_unsupported_resnet_depth_is_named() -> None:
    tensors = {k: v for k, v in _zeros(cf.detectron2_keys()).items() if ".res4.5." not in k}
    with pytest.raises(UsageError, match=r"blocks per stage \[3, 4, 5, 3\] is not supported"):
        _convert("detectron2", tensors)


def test_detectron2_fills_missing_running_stats_like_detectron2() -> None:
    keys = {k: v for k, v in cf.detectron2_keys().items() if not k.endswith(("running_mean", "running_var"))}
    tensors = _zeros(keys)
    result = _convert("detectron2", tensors)
    assert torch.equal(result.state_dict["backbone.layer1.0.conv1.norm.running_var"], torch.ones(64))
    assert any("filled mean 0, var 1" in n for n in result.notes)


def _save_subset(path: Path, framework: str, n: int) -> Path:
    """A small torch file with the first n keys of a framework (enough to recognise it)."""
    keys = dict(list(cf.key_spec(framework).items())[:n])
    torch.save({k: torch.zeros(shape) for k, (_, shape) in keys.items()}, path)
    return path


def test_wrong_framework_names_the_likely_one(tmp_path: Path) -> None:
    path = _save_subset(tmp_path / "tv.pth", "torchvision_v1", 40)
    with pytest.raises(UsageError, match=r"does not look like a detectron2 checkpoint: only 0 of 40 keys .* "
                                         r"fit torchvision best \(40 of 40\): try --source torchvision"):
        import_checkpoint(path, source="detectron2")


def test_explicit_source_on_a_partial_checkpoint_lists_the_missing_keys(tmp_path: Path) -> None:
    path = _save_subset(tmp_path / "yh.pt", "yhenon", 40)
    with pytest.raises(UsageError, match=r"yh\.pt: checkpoint does not fit yhenon/pytorch-retinanet .* missing"):
        import_checkpoint(path, source="yhenon")


def test_unknown_framework_shows_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.layers.0.weight": torch.zeros(3), "decoder.out.bias": torch.zeros(3)}, path)
    with pytest.raises(UsageError, match=r"could not tell which framework wrote it: .*encoder\.layers\.0\.weight"):
        import_checkpoint(path)


def test_unknown_source_name_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"unknown --source 'mmdet'; choose one of: auto, torchvision, detectron2"):
        import_checkpoint(tmp_path / "x.pth", source="mmdet")


def test_a_file_without_tensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cfg.pth"
    torch.save({"iteration": 3, "cfg": "MODEL: {}"}, path)
    with pytest.raises(UsageError, match=r"holds no tensors \(top-level keys: cfg, iteration\)"):
        import_checkpoint(path)


def test_torchvision_v1_eps_follows_the_weights_origin() -> None:
    """eps 0 for torchvision's own 91-class COCO_V1 weights (overwrite_eps), 1e-5 for a fine-tuned model."""
    keys = cf.torchvision_keys(v2=False, legacy=False)
    assert _convert("torchvision_v1", _zeros(keys)).spec.backbone.norm.eps == 0.0
    keys["head.classification_head.cls_logits.weight"] = ("cls_pred", (9 * 3, 256, 3, 3))
    keys["head.classification_head.cls_logits.bias"] = ("cls_pred_bias", (9 * 3,))
    spec = _convert("torchvision_v1", _zeros(keys)).spec
    assert spec.backbone.norm.eps == 1e-5 and spec.postprocess.label_map == [0, 1, 2]
    assert spec.class_names() == ["class_0", "class_1", "class_2"]
