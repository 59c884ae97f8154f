"""Caffe ports (tests/caffe_factory.py): a .prototxt + .caffemodel with the seed port's structure
(Scale-with-bias FrozenBN, bilinear Deconvolution upsampling, 1 class, stride in the 1x1 conv, k3 s2
p0 ceil stem pool) and a COCO R50 (BatchNorm + Scale, 80 classes) import with every blob consumed;
the exported ONNX matches a NumPy reference of the Caffe layer semantics (tests/caffe_reference.py)
to max_rel 1e-4; the legacy V1 format, legacy blob shapes and double_data read; unknown layers and
layers outside the structure are refused by name."""

from __future__ import annotations

import time
from pathlib import Path

import caffe_factory as cf
import caffe_reference as cref
import numpy as np
import onnx
import pytest

from retinanet_trt.cli.export import main as export_main
from retinanet_trt.cli.inspect import main as inspect_main
from retinanet_trt.errors import UsageError
from retinanet_trt.export.parity import compare_outputs, worst
from retinanet_trt.export.pipeline import ExportOptions, export_onnx
from retinanet_trt.importers import ImportResult, import_checkpoint
from retinanet_trt.model.retinanet import output_names
from retinanet_trt.runtime.backends.ort_backend import cpu_session
from retinanet_trt.spec.coco import COCO_IDS

# The seed port's structure (its FPN and head are 1024 wide; 128 here keeps the five per-level head
# copies of the caffemodel small) and the original MSRA ResNet-50's k3 s2 p0 ceil stem pool.
PORT = cf.PortOptions(stem=16, width=16, fpn=128, classes=1, norm="scale", input_hw=(64, 64))
COCO = cf.PortOptions(fpn=256, classes=80, norm="bn_scale", input_hw=(128, 128))
V1 = cf.PortOptions(depth=18, stem=16, width=16, fpn=32, classes=3, norm="bias", stem_pad=1, stem_ceil=False,
                    shared_head=False, v1=True, input_hw=(64, 96))


def _export_vs_reference(result: ImportResult, layers: list[cf.CaffeLayer], hw: tuple[int, int], out: Path) -> float:
    """Export, run the ONNX file in ONNX Runtime and compare every output with the NumPy Caffe reference."""
    report = export_onnx(result.build_model(), result.spec, out, ExportOptions(input_hw=hw))
    assert report["passed"]
    x = np.random.default_rng(7).standard_normal((1, 3, *hw)).astype(np.float32)
    names = output_names(result.spec)
    got = dict(zip(names, cpu_session(out.read_bytes()).run(names, {"images": x}), strict=True))
    return worst(compare_outputs(cref.head_outputs(layers, x), got))[1]


def test_seed_port_structure_imports_and_exports_like_caffe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layers = cf.build_port(PORT, seed=1)
    caffemodel, _ = cf.save_port(layers, PORT, tmp_path, legacy_every=7, double_every=11)
    assert inspect_main([str(caffemodel)]) == 0  # the prototxt beside it is found
    out = capsys.readouterr().out
    assert "source      caffe" in out and "all consumed" in out
    result = import_checkpoint(caffemodel)
    spec = result.spec
    assert (spec.backbone.norm.kind, spec.backbone.stem_pool, spec.backbone.stride_in_1x1) == ("affine", "caffe_ceil", True)
    assert (spec.fpn.upsample, spec.fpn.out_channels, spec.fpn.p6_from, spec.head.shared) == ("deconv", 128, "c5", True)
    assert (spec.fpn.deconv_groups, spec.fpn.head_reads_relu_p6) == (0, False)  # per-channel, P6 unactivated
    assert not any("dataflow differs" in note for note in result.notes)
    assert spec.head.num_classes == 1 and spec.postprocess.label_map == [1] and spec.postprocess.nms_iou == 0.4
    blobs = sum(len(layer.blobs) for layer in layers)
    assert f"({blobs} blobs in {sum(1 for la in layers if la.blobs)} layers, all consumed)" in result.notes[0]
    t0 = time.perf_counter()
    max_rel = _export_vs_reference(result, layers, PORT.input_hw, tmp_path / "port.onnx")
    graph = onnx.load(tmp_path / "port.onnx").graph
    deconvs = [n for n in graph.node if n.op_type == "ConvTranspose"]
    assert len(deconvs) == 2 and all(a.i == 128 for n in deconvs for a in n.attribute if a.name == "group")
    assert not any(a.name == "ceil_mode" and a.i for n in graph.node for a in n.attribute)
    print(f"\ncaffe seed-port structure {PORT.input_hw}: ONNX vs NumPy Caffe max_rel {max_rel:.2e} "
          f"({time.perf_counter() - t0:.1f} s)")
    assert max_rel <= 1e-4


@pytest.mark.slow
def test_coco_r50_imports_and_exports_like_caffe(tmp_path: Path) -> None:
    layers = cf.build_port(COCO, seed=2)
    caffemodel, prototxt = cf.save_port(layers, COCO, tmp_path, stem="coco_r50")
    result = import_checkpoint(caffemodel, prototxt=prototxt)
    assert result.spec.backbone.depth == 50 and result.spec.head.num_classes == 80
    assert result.spec.postprocess.label_map == COCO_IDS and result.spec.backbone.width_per_group == 64
    t0 = time.perf_counter()
    max_rel = _export_vs_reference(result, layers, COCO.input_hw, tmp_path / "coco.onnx")
    print(f"\ncaffe COCO R50 {COCO.input_hw}: ONNX vs NumPy Caffe max_rel {max_rel:.2e} ({time.perf_counter() - t0:.1f} s)")
    assert max_rel <= 1e-4


def test_v1_layers_legacy_blobs_and_per_level_heads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layers = cf.build_port(V1, seed=3)
    caffemodel, prototxt = cf.save_port(layers, V1, tmp_path, stem="v1", legacy_every=3)
    assert "layers {" in prototxt.read_text() and "type: CONVOLUTION" in prototxt.read_text()
    result = import_checkpoint(caffemodel)
    spec = result.spec
    assert spec.backbone.depth == 18 and spec.backbone.stem_pool == "pytorch" and not spec.head.shared
    assert "head.4.cls_pred.weight" in result.state_dict
    max_rel = _export_vs_reference(result, layers, V1.input_hw, tmp_path / "v1.onnx")
    assert export_main([str(caffemodel), "--prototxt", str(prototxt), "--input-size", "64", "96",
                        "--class-names", str(_names(tmp_path)), "-o", str(tmp_path / "cli.onnx"), "--quiet"]) == 0
    assert "PASS" in capsys.readouterr().out
    print(f"\ncaffe V1 ResNet-18 {V1.input_hw}: ONNX vs NumPy Caffe max_rel {max_rel:.2e}")
    assert max_rel <= 1e-4


def test_stem_pool_p1_ceil_needs_sizes_that_halve(tmp_path: Path) -> None:
    """The straight translation of PyTorch's k3 s2 p1 pool keeps Caffe's ceil: 400 -> 201, so only
    some sides line up with the x2 upsampling (56 does: 28 -> 15 -> 8 -> 4 -> 2)."""
    opts = cf.PortOptions(depth=18, stem=8, width=8, fpn=16, classes=2, norm="scale", stem_pad=1, input_hw=(56, 56))
    layers = cf.build_port(opts, seed=6)
    result = import_checkpoint(cf.save_port(layers, opts, tmp_path, stem="p1")[0])
    assert result.spec.backbone.stem_pool == "caffe_ceil_p1"
    assert _export_vs_reference(result, layers, opts.input_hw, tmp_path / "p1.onnx") <= 1e-4
    with pytest.raises(UsageError, match=r"k3 s2 p1 ceil_mode, C3..C5 of a side of 64 do not halve exactly.*e\.g\. 62"):
        export_onnx(result.build_model(), result.spec, tmp_path / "x.onnx", ExportOptions(input_hw=(64, 64)))


def _names(folder: Path) -> Path:
    path = folder / "names.txt"
    path.write_text("text\nlogo\nstamp\n")
    return path


def _refusal(tmp_path: Path, text: str, model: bytes) -> str:
    (tmp_path / "m.caffemodel").write_bytes(model)
    (tmp_path / "m.prototxt").write_text(text)
    with pytest.raises(UsageError) as info:
        import_checkpoint(tmp_path / "m.caffemodel")
    return str(info.value)


def test_unknown_and_stray_layers_are_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layers = cf.build_port(PORT, seed=4)
    text, model = cf.prototxt(layers, PORT), cf.caffemodel(layers, PORT)
    upsample = text.replace('type: "Deconvolution"\n  bottom: "backbone_fpn_fpn_inner4"',
                            'type: "Upsample"\n  bottom: "backbone_fpn_fpn_inner4"', 1)
    assert "layer 'backbone_fpn_up4' has type 'Upsample', which this importer does not support" in _refusal(
        tmp_path, upsample, model)
    assert inspect_main([str(tmp_path / "m.caffemodel")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    stray = text + 'layer {\n  name: "extra_relu"\n  type: "ReLU"\n  bottom: "p6_relu"\n  top: "extra"\n}\n'
    assert "1 layers are not part of the RetinaNet structure: extra_relu" in _refusal(tmp_path, stray, model)
    unknown_field = text.replace("kernel_size: 3\n", "kernel_size: 3\n    foo: 1\n", 1)
    assert 'has no field named "foo"' in _refusal(tmp_path, unknown_field, model)
    rewired = text.replace('bottom: "pool1"', 'bottom: "backbone_body_stem_conv1"', 1)
    assert "reads 'backbone_body_stem_conv1', expected 'pool1'" in _refusal(tmp_path, rewired, model)


def test_missing_prototxt_and_text_checkpoints_are_explained(tmp_path: Path) -> None:
    layers = cf.build_port(PORT, seed=5)
    (tmp_path / "alone.caffemodel").write_bytes(cf.caffemodel(layers, PORT))
    with pytest.raises(UsageError, match=r"its net structure is in a \.prototxt; pass it with --prototxt"):
        import_checkpoint(tmp_path / "alone.caffemodel")
    (tmp_path / "net.prototxt").write_text(cf.prototxt(layers, PORT))
    with pytest.raises(UsageError, match=r"is text \(a Caffe \.prototxt\?\)"):
        import_checkpoint(tmp_path / "net.prototxt")
