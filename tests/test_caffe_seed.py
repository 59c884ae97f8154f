"""The seed's own Caffe port (tests/caffe_factory.py seed_port: its NetSpec script with its names,
DummyData input, in-place ReLU on P6 before the heads and group-less upsampling Deconvolution)
imports and exports as Caffe computes it: the ONNX outputs equal the NumPy Caffe reference
(tests/caffe_reference.py, which follows tops and bottoms in layer order, in-place layers included)
at two input sizes, for the 1024-channel 1-class text detector and an 80-class head. Also: every
input form Caffe has, Deconvolutions of any group with their own weights, the dataflows Caffe
itself refuses, and names outside the alias table, each refused in one line."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import caffe_factory as cf
import caffe_reference as cref
import numpy as np
import onnx
import pytest
import torch

from retinanet_trt.cli.export import main as export_main
from retinanet_trt.errors import UsageError
from retinanet_trt.export.parity import compare_outputs, worst
from retinanet_trt.export.pipeline import ExportOptions, export_onnx
from retinanet_trt.importers import ImportResult, import_checkpoint
from retinanet_trt.model.retinanet import build_model, output_names
from retinanet_trt.runtime.backends.ort_backend import cpu_session
from retinanet_trt.spec.coco import COCO_IDS
from retinanet_trt.spec.presets import get_preset

SIZES = [(128, 160), (160, 224)]
SMALL = cf.SeedOptions(fpn=32, width=8, classes=1, input_hw=(64, 96))


def _vs_reference(path: Path, spec_outputs: list[str], layers: list[cf.CaffeLayer], tops: dict[str, str],
                  hw: tuple[int, int]) -> float:
    """Run the ONNX file at `hw` in ONNX Runtime; max_rel over every output against the NumPy Caffe reference."""
    x = np.random.default_rng(hw[0] + hw[1]).standard_normal((1, 3, *hw)).astype(np.float32)
    got = dict(zip(spec_outputs, cpu_session(path).run(spec_outputs, {"images": x}), strict=True))
    return worst(compare_outputs(cref.head_outputs(layers, x, tops), got))[1]


def _groups(path: Path) -> list[int]:
    """The group of every ConvTranspose in an ONNX file (1 when the attribute is left out)."""
    nodes = [n for n in onnx.load(path, load_external_data=False).graph.node if n.op_type == "ConvTranspose"]
    return [next((a.i for a in n.attribute if a.name == "group"), 1) for n in nodes]


def _import(layers: list[cf.CaffeLayer], opts: cf.SeedOptions, folder: Path, stem: str = "seed") -> ImportResult:
    caffemodel, _ = cf.save_port(layers, opts, folder, stem=stem)
    return import_checkpoint(caffemodel)


@pytest.mark.slow
def test_seed_text_detector_1024_channels_exports_like_caffe_at_two_sizes(tmp_path: Path) -> None:
    opts = cf.SeedOptions()  # R-50, FPN and head at 1024, 1 class, one copy of the head per level
    t0 = time.perf_counter()
    layers = cf.seed_port(opts, seed=11)
    caffemodel, prototxt = cf.save_port(layers, opts, tmp_path, stem="text")
    assert caffemodel.stat().st_size > 1.9e9  # the port as the seed has it: 5 copies of a 1024-wide head
    result = import_checkpoint(caffemodel, prototxt=prototxt)
    caffemodel.unlink()  # 2 GB
    spec, preset = result.spec, get_preset("r50_fpn1024_1class")
    for part in ("depth", "stride_in_1x1", "stem_pool", "stem_channels", "width_per_group"):
        assert getattr(spec.backbone, part) == getattr(preset.backbone, part), part
    assert (spec.fpn.out_channels, spec.fpn.p6_from, spec.head.channels, spec.head.num_convs, spec.head.num_classes) == (
        preset.fpn.out_channels, preset.fpn.p6_from, preset.head.channels, preset.head.num_convs, 1)
    assert spec.head.shared and spec.fpn.head_reads_relu_p6 and spec.fpn.deconv_groups == 1
    assert "head.0.cls_pred.weight" not in result.state_dict  # equal copies -> one shared head
    built = time.perf_counter() - t0
    out = tmp_path / "text.onnx"
    report = export_onnx(result.build_model(), spec, out, ExportOptions(input_hw=SIZES[0], dynamic=True))
    del result
    assert report["passed"] and _groups(out) == [1, 1]
    figures = {hw: _vs_reference(out, output_names(spec), layers, cf.seed_outputs(opts), hw) for hw in SIZES}
    out.unlink()  # 700 MB
    print("\ncaffe seed port, 1024 ch, 1 class: ONNX vs NumPy Caffe max_rel "
          + ", ".join(f"{h}x{w} {v:.2e}" for (h, w), v in figures.items())
          + f" (port + import {built:.0f} s, total {time.perf_counter() - t0:.0f} s)")
    assert all(v <= 1e-4 for v in figures.values())


@pytest.mark.slow
def test_seed_port_with_an_80_class_head_per_level_exports_like_caffe(tmp_path: Path) -> None:
    opts = cf.SeedOptions(fpn=256, classes=80, shared_head=False)  # head copies that differ: a head per level
    layers = cf.seed_port(opts, seed=12)
    result = _import(layers, opts, tmp_path, stem="coco")
    spec = result.spec
    assert not spec.head.shared and spec.head.num_classes == 80 and spec.postprocess.label_map == COCO_IDS
    assert "head.4.cls_pred.weight" in result.state_dict and spec.fpn.head_reads_relu_p6
    figures = {}
    for hw in SIZES:  # one static export per size
        out = tmp_path / f"coco_{hw[0]}.onnx"
        assert export_onnx(result.build_model(), spec, out, ExportOptions(input_hw=hw))["passed"]
        figures[hw] = _vs_reference(out, output_names(spec), layers, cf.seed_outputs(opts), hw)
    print("\ncaffe seed port, 256 ch, 80 classes, head per level: ONNX vs NumPy Caffe max_rel "
          + ", ".join(f"{h}x{w} {v:.2e}" for (h, w), v in figures.items()))
    assert all(v <= 1e-4 for v in figures.values())


def test_seed_port_names_dataflow_and_notes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layers = cf.seed_port(SMALL, seed=13)
    text = cf.prototxt(layers, SMALL)
    assert 'type: "DummyData"' in text and "group" not in text
    assert 'name: "backbone_fpn_topblocks_relu"\n  type: "ReLU"\n  bottom: "backbone_fpn_topblocks_p6"\n  top: ' \
           '"backbone_fpn_topblocks_p6"' in text
    names = [la.name for la in layers]
    assert names.index("backbone_fpn_topblocks_relu") < names.index("rpn_head_cls_tower_p6_0")  # Caffe runs it first
    result = _import(layers, SMALL, tmp_path)
    notes = "\n".join(result.notes)
    assert "input: DummyData 'data' (1 x 3 x 64 x 96" in notes
    assert "copies tagged _p2, _p3, _p4, _p6, _p7 for P3..P7" in notes
    assert ("names from the alias table: backbone_fpn_fpn_inner3_lateral for backbone_fpn_fpn_inner3, "
            "backbone_fpn_topblocks_p6 for backbone_fpn_top_blocks_p6") in notes
    assert "the head reads relu(P6): ReLU 'backbone_fpn_topblocks_relu' runs in place on" in notes
    assert "Deconvolutions have group 1 (a full 32 x 32 kernel)" in notes
    spec = result.spec
    assert spec.fpn.head_reads_relu_p6 and spec.fpn.deconv_groups == 1 and spec.head.shared
    # Caffe's relu(P6) to the head is what the reference computes; maskrcnn-benchmark's P6 is not.
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    ref = cref.head_outputs(layers, x, cf.seed_outputs(SMALL))
    model = result.build_model()
    mb_spec = replace(spec, fpn=replace(spec.fpn, head_reads_relu_p6=False))
    mb = build_model(mb_spec)
    mb.load_state_dict(result.state_dict)
    with torch.no_grad():
        ours = dict(zip(output_names(spec), (t.numpy() for t in model(torch.from_numpy(x)))))
        theirs = dict(zip(output_names(spec), (t.numpy() for t in mb(torch.from_numpy(x)))))
    assert worst(compare_outputs(ref, ours))[1] <= 1e-5
    assert compare_outputs(ref, theirs)["cls_p6"]["max_rel"] > 1e-2
    assert compare_outputs(ref, theirs)["cls_p5"]["max_rel"] <= 1e-5  # only the P6 head reads it
    out = tmp_path / "cli.onnx"
    report = tmp_path / "cli.json"
    assert export_main([str(tmp_path / "seed.caffemodel"), "--input-size", "64", "96", "-o", str(out),
                        "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "PASS" in printed and "trt-export: import: " in printed and "the head reads relu(P6)" in printed
    assert any("the head reads relu(P6)" in note for note in json.loads(report.read_text())["import_notes"])
    assert _vs_reference(out, output_names(spec), layers, cf.seed_outputs(SMALL), (64, 96)) <= 1e-4


def test_head_reading_a_relu_of_its_own_top_is_relu_p6_too(tmp_path: Path) -> None:
    opts = cf.PortOptions(depth=18, stem=8, width=8, fpn=16, classes=1, head_reads_relu_p6=True, input_hw=(64, 64))
    layers = cf.build_port(opts, seed=14)
    result = import_checkpoint(cf.save_port(layers, opts, tmp_path)[0])
    assert result.spec.fpn.head_reads_relu_p6 and "runs on 'backbone_fpn_top_blocks_p6'" in "\n".join(result.notes)
    out = tmp_path / "m.onnx"
    assert export_onnx(result.build_model(), result.spec, out, ExportOptions(input_hw=(64, 64)))["passed"]
    assert _vs_reference(out, output_names(result.spec), layers, {
        f"{o}_p{lv}": f"rpn_head_{p}_p{lv}" for o, p in (("cls", "cls_logits"), ("box", "bbox_pred"))
        for lv in range(3, 8)}, (64, 64)) <= 1e-4


@pytest.mark.parametrize(("group", "weights"), [(2, "random"), (None, "random"), (32, "random"), (4, "bilinear")])
def test_deconvolution_of_any_group_keeps_its_stored_weights(tmp_path: Path, group: int | None, weights: str) -> None:
    opts = replace(SMALL, deconv_group=group, deconv_weights=weights)
    layers = cf.seed_port(opts, seed=15)
    result = _import(layers, opts, tmp_path)
    want = group or 1
    assert result.spec.fpn.deconv_groups == (0 if want == 32 else want)
    assert result.state_dict["fpn.upsample3.weight"].shape == (32, 32 // want, 4, 4)
    assert ("not Caffe's bilinear filler" in "\n".join(result.notes)) == (weights == "random")
    out = tmp_path / "m.onnx"
    assert export_onnx(result.build_model(), result.spec, out, ExportOptions(input_hw=(64, 96)))["passed"]
    assert _groups(out) == [want, want]
    assert _vs_reference(out, output_names(result.spec), layers, cf.seed_outputs(opts), (64, 96)) <= 1e-4


_DUMMY = 'dummy_data_param {\n    shape {\n      dim: 1\n      dim: 3\n      dim: 64\n      dim: 96\n    }\n  }'
_DUMMY_LAYER = 'layer {\n  name: "data"\n  type: "DummyData"\n  top: "data"\n  ' + _DUMMY + '\n}\n'


@pytest.mark.parametrize(("form", "edit", "source"), [
    ("DummyData legacy 4-D", lambda t: t.replace(_DUMMY, "dummy_data_param {\n    num: 1\n    channels: 3\n    "
                                                 "height: 64\n    width: 96\n  }"), "DummyData 'data' (1 x 3 x 64 x 96"),
    ("DummyData constant filler", lambda t: t.replace(_DUMMY, _DUMMY[:-3] + '  data_filler {\n      type: "constant"\n'
                                                      "    }\n  }"), "DummyData 'data' (1 x 3 x 64 x 96"),
    ("Input", lambda t: t.replace('type: "DummyData"', 'type: "Input"').replace("dummy_data_param", "input_param"),
     "Input 'data' (1 x 3 x 64 x 96"),
    ("input_shape", lambda t: t.replace(_DUMMY_LAYER, 'input: "data"\ninput_shape {\n  dim: 1\n  dim: 3\n  dim: 64\n'
                                        "  dim: 96\n}\n"), "the net's input 'data' (1 x 3 x 64 x 96"),
    ("input_dim", lambda t: t.replace(_DUMMY_LAYER, 'input: "data"\n' + "".join(f"input_dim: {d}\n" for d in (1, 3, 64, 96))),
     "the net's input 'data' (1 x 3 x 64 x 96"),
])
def test_every_input_form_caffe_has(tmp_path: Path, form: str, edit, source: str) -> None:  # type: ignore[no-untyped-def]
    layers = cf.seed_port(SMALL, seed=16)
    text = cf.prototxt(layers, SMALL)
    assert _DUMMY_LAYER in text
    changed = edit(text)
    assert changed != text, form
    (tmp_path / "seed.prototxt").write_text(changed)
    (tmp_path / "seed.caffemodel").write_bytes(cf.caffemodel(layers, SMALL))
    result = import_checkpoint(tmp_path / "seed.caffemodel")
    assert f"input: {source}" in "\n".join(result.notes)
    assert result.spec.fpn.head_reads_relu_p6 and result.spec.head.num_classes == 1


def _refusal(tmp_path: Path, layers: list[cf.CaffeLayer], text: str | None = None) -> str:
    (tmp_path / "m.prototxt").write_text(text if text is not None else cf.prototxt(layers, SMALL))
    (tmp_path / "m.caffemodel").write_bytes(cf.caffemodel(layers, SMALL))
    with pytest.raises(UsageError) as info:
        import_checkpoint(tmp_path / "m.caffemodel")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_inputs_caffe_would_not_feed_the_image_are_refused(tmp_path: Path) -> None:
    layers = cf.seed_port(SMALL, seed=17)
    text = cf.prototxt(layers, SMALL)
    gaussian = text.replace(_DUMMY, _DUMMY[:-3] + '  data_filler {\n      type: "gaussian"\n    }\n  }')
    assert ("DummyData with a 'gaussian' filler refills its top on every forward, so Caffe never sees the image; use "
            "a constant filler or an Input layer") in _refusal(tmp_path, layers, gaussian)
    gray = text.replace("dim: 1\n      dim: 3\n", "dim: 1\n      dim: 1\n", 1)
    assert "DummyData 'data' is declared 1 x 1 x 64 x 96; a RetinaNet reads N x 3 x H x W images" in _refusal(
        tmp_path, layers, gray)
    two = 'input: "extra"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n' + text.split("\n", 1)[1]
    assert "the net has 2 inputs (extra, data); a RetinaNet has one" in _refusal(tmp_path, layers, two)


def test_dataflows_caffe_refuses_are_refused(tmp_path: Path) -> None:
    layers = cf.seed_port(SMALL, seed=18)
    # The in-place ReLU on P6 moved after the heads: the head's P6 layers and P7 then read P6 as well,
    # and Caffe's Net stops ("Top blob ... produced by multiple sources"); so does the reference.
    relu = next(la for la in layers if la.name == "backbone_fpn_topblocks_relu")
    late = [la for la in layers if la is not relu] + [relu]
    with pytest.raises(ValueError, match="produced by multiple sources"):
        cref.run(late, np.zeros((1, 3, 64, 96)))
    message = _refusal(tmp_path, late)
    assert message.endswith("layer 'backbone_fpn_topblocks_relu' works in place on 'backbone_fpn_topblocks_p6', which "
                            "'backbone_fpn_top_blocks_p7', 'rpn_head_cls_tower_p6_0', 'rpn_head_bbox_tower_p6_0' also "
                            "read before it: Caffe's Net stops on this (the in-place top is then 'produced by multiple "
                            "sources'); give 'backbone_fpn_topblocks_relu' a top of its own")
    # A second layer writing a top that is not its own bottom.
    twice = [replace(la, top=["backbone_fpn_fpn_layer4"]) if la.name == "backbone_fpn_fpn_layer3" else la for la in layers]
    with pytest.raises(ValueError, match="produced by multiple sources"):
        cref.check_dataflow(twice)
    assert ("layer 'backbone_fpn_fpn_layer3' writes blob 'backbone_fpn_fpn_layer4', which 'backbone_fpn_fpn_layer4' "
            "already wrote: Caffe refuses a top made by two layers") in _refusal(tmp_path, twice)


def _renamed(layers: list[cf.CaffeLayer], old: str, new: str) -> list[cf.CaffeLayer]:
    def swap(names: list[str]) -> list[str]:
        return [new if n == old else n for n in names]

    return [replace(la, name=new if la.name == old else la.name, bottom=swap(la.bottom), top=swap(la.top))
            for la in layers]


def test_names_outside_the_alias_table_say_which_names_fit(tmp_path: Path) -> None:
    layers = cf.seed_port(SMALL, seed=19)
    lateral = _renamed(layers, "backbone_fpn_fpn_inner3_lateral", "backbone_fpn_fpn_inner3_lat")
    assert ("no Convolution layer for the FPN lateral of C4: expected one named backbone_fpn_fpn_inner3 or "
            "backbone_fpn_fpn_inner3_lateral; 'backbone_fpn_fpn_inner3' is of type Eltwise (the PyTorch module's "
            "name with '.' -> '_', or an alias: rename the layer, or add its spelling to ALIASES in "
            "importers/caffe_names.py)") in _refusal(tmp_path, lateral)
    p6 = _renamed(layers, "backbone_fpn_topblocks_p6", "fpn_p6")
    assert "no Convolution layer for P6: expected one named backbone_fpn_top_blocks_p6 or backbone_fpn_topblocks_p6" in (
        _refusal(tmp_path, p6))
    logits = _renamed(layers, "rpn_head_cls_logits_p6", "rpn_head_cls_score_p6")
    assert ("no head layer reads 'rpn_head_cls_tower_p6_6' (P6's cls tower after 4 convs): expected a Convolution "
            "named rpn_head_cls_logits or rpn_head_cls_logits<level> or rpn_head_cls_tower_8 or "
            "rpn_head_cls_tower_8<level> or rpn_head_cls_tower<level>_8 (<level>: a tag such as _p6), found "
            "'rpn_head_cls_score_p6'") in _refusal(tmp_path, logits)


def test_head_copies_mixing_level_tags_or_p6_inputs_are_refused(tmp_path: Path) -> None:
    layers = cf.seed_port(SMALL, seed=20)
    mixed = _renamed(layers, "rpn_head_cls_tower_p3_2", "rpn_head_cls_tower_2_p4")
    assert ("P4's head layers carry different level tags: rpn_head_cls_tower_p3_0 (_p3), rpn_head_cls_tower_2_p4 "
            "(_p4)") in _refusal(tmp_path, mixed)
    opts = cf.PortOptions(depth=18, stem=8, width=8, fpn=16, classes=1, input_hw=(64, 64))
    port = cf.build_port(opts, seed=21)
    split = [replace(la, bottom=["p6_relu"]) if la.name == "rpn_head_bbox_tower_0_p6" else la for la in port]
    (tmp_path / "s.prototxt").write_text(cf.prototxt(split, opts))
    (tmp_path / "s.caffemodel").write_bytes(cf.caffemodel(split, opts))
    with pytest.raises(UsageError, match=r"at P6 the head layers 'rpn_head_cls_tower_0_p6' read P6 and "
                                         r"'rpn_head_bbox_tower_0_p6' read relu\(P6\), which is not supported"):
        import_checkpoint(tmp_path / "s.caffemodel")


def test_a_v1_net_with_a_dummy_data_input(tmp_path: Path) -> None:
    opts = cf.PortOptions(depth=18, stem=8, width=8, fpn=16, classes=1, norm="bias", v1=True, input_hw=(64, 96))
    layers = cf.build_port(opts, seed=22)
    text = cf.prototxt(layers, opts)
    net_input = 'input: "data"\n' + "".join(f"input_dim: {d}\n" for d in (1, 3, 64, 96))
    assert net_input in text
    dummy = ('layers {\n  name: "data"\n  type: DUMMY_DATA\n  top: "data"\n  dummy_data_param {\n    num: 1\n    '
             "channels: 3\n    height: 64\n    width: 96\n  }\n}\n")
    (tmp_path / "v1.prototxt").write_text(text.replace(net_input, dummy))
    (tmp_path / "v1.caffemodel").write_bytes(cf.caffemodel(layers, opts))
    result = import_checkpoint(tmp_path / "v1.caffemodel")
    assert "input: DummyData 'data' (1 x 3 x 64 x 96" in "\n".join(result.notes)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        ours = dict(zip(output_names(result.spec), (t.numpy() for t in result.build_model()(torch.from_numpy(x)))))
    assert worst(compare_outputs(cref.head_outputs(layers, x), ours))[1] <= 1e-5
