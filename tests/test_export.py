"""trt-export: folded BN, fixed pools, simplified, level-tagged, spec inside, parity with PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from retinanet_trt.export.fold import fold_frozen_norms
from retinanet_trt.export.naming import node_group
from retinanet_trt.export.pipeline import ExportOptions, export_onnx
from retinanet_trt.model import build_model, output_names
from retinanet_trt.spec import NormSpec
from retinanet_trt.spec.metadata import read_info, read_spec
from retinanet_trt.spec.presets import get_preset


@pytest.mark.parametrize("norm", [NormSpec("frozen_bn", 1e-5), NormSpec("frozen_bn", 0.0), NormSpec("affine", 0.0)])
def test_folding_keeps_outputs_and_removes_every_norm(norm: NormSpec) -> None:
    spec = get_preset("tiny")
    spec.backbone.norm = norm
    model = build_model(spec, seed=1)
    folded, count = fold_frozen_norms(model)
    assert count == 20  # stem + 8 basic blocks x 2 convs + 3 downsamples
    assert not any(type(m).__name__ == "FrozenNorm" for m in folded.modules())
    for seed in range(3):
        x = torch.from_numpy(np.random.default_rng(seed).standard_normal((2, 3, 96, 128)).astype(np.float32))
        with torch.no_grad():
            for a, b in zip(model(x), folded(x)):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def _conv_followed_by_affine(graph: onnx.GraphProto) -> int:
    """Count Conv -> Mul/Add-with-a-constant pairs (an unfolded norm left behind)."""
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    conv_outputs = {n.output[0] for n in graph.node if n.op_type == "Conv"}
    return sum(
        1 for n in graph.node
        if n.op_type in ("Mul", "Add") and any(i in conv_outputs for i in n.input) and any(i in constants for i in n.input)
    )


def test_r50_static_export_matches_pytorch(tmp_path) -> None:
    spec = get_preset("retinanet_r50_fpn")
    out = tmp_path / "m.onnx"
    report = export_onnx(build_model(spec, seed=0), spec, out, ExportOptions(input_hw=(480, 640)))
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == output_names(spec)
    shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert shapes["cls_p3"] == [1, 720, 60, 80]
    assert shapes["box_p7"] == [1, 36, 4, 5]
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops
    assert _conv_followed_by_affine(model.graph) == 0
    assert all(r["max_rel"] <= 1e-4 for r in report["parity"][0]["outputs"].values())
    assert read_spec(out).to_dict() == spec.to_dict()
    assert read_info(out)["fixes"]["folded_norms"] == 53


def test_ceil_pool_preset_exports_without_ceil_mode(tmp_path) -> None:
    spec = get_preset("r50_fpn1024_1class")
    # Narrow the text model so the test stays fast; the pool and stride rules are what matter.
    spec.fpn.out_channels = spec.head.channels = 64
    spec.head.num_convs = 1
    out = tmp_path / "text.onnx"
    report = export_onnx(build_model(spec, seed=0), spec, out, ExportOptions(input_hw=(224, 288), dynamic=True))
    assert report["fixes"]["ceil_mode_pools_rewritten"] == ["/backbone/stem/pool/MaxPool"]
    assert report["checks"] == {"batch_normalization_nodes": 0, "ceil_mode_pools": 0}
    assert len(report["parity"]) == 3 and len({tuple(r["input_hw"]) for r in report["parity"]}) == 3
    assert report["worst_max_rel"] <= 1e-4


def test_dynamic_export_parity_at_three_sizes_and_batch(tiny_onnx) -> None:
    path, spec = tiny_onnx
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = build_model(spec, seed=0)
    for n, h, w in [(1, 96, 128), (2, 160, 224), (3, 64, 64)]:
        x = np.random.default_rng(h).standard_normal((n, 3, h, w)).astype(np.float32)
        got = sess.run(output_names(spec), {"images": x})
        with torch.no_grad():
            want = [t.numpy() for t in model(torch.from_numpy(x))]
        for g, r in zip(got, want):
            assert g.shape == r.shape
            assert np.abs(g - r).max() <= 1e-4 * np.abs(r).max()


def test_every_node_is_tagged_with_its_part_or_level(tiny_onnx) -> None:
    path, spec = tiny_onnx
    graph = onnx.load(str(path)).graph
    groups = [node_group(n.name) for n in graph.node]
    convs = [node_group(n.name) for n in graph.node if n.op_type == "Conv"]
    assert set(convs) == {"backbone", "fpn", "p3", "p4", "p5", "p6", "p7"}
    # Each level runs the same shared head: the same number of nodes per level.
    per_level = {lv: groups.count(f"p{lv}") for lv in spec.levels}
    assert len(set(per_level.values())) == 1 and per_level[3] == 2 * (2 * spec.head.num_convs + 1)
    assert len({n.name for n in graph.node}) == len(graph.node)


def test_node_group_handles_fused_tensorrt_layer_names() -> None:
    assert node_group("p3/cls_tower.0/conv/Conv + p3/cls_tower.0/Relu") == "p3"
    assert node_group("backbone/layer1.0/conv1/conv/Conv") == "backbone"
    assert node_group("fpn/output3/Conv + p3/cls_tower.0/conv/Conv") == "mixed"
    assert node_group("Reformatting CopyNode for Input Tensor 0") == "other"
