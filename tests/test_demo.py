"""Demo training helpers (anchor matching, target layout, norm freezing) and the shipped checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retinanet_trt.demo import DEMO_CHECKPOINT, load_demo
from retinanet_trt.demo.train import build_targets, flatten_outputs, freeze_norms, match_anchors, trainable_model
from retinanet_trt.model import output_names
from retinanet_trt.runtime.anchors import grid_anchors
from retinanet_trt.spec.presets import tiny


def test_match_anchors_thresholds_and_best_anchor() -> None:
    gt = np.array([[0, 0, 10, 10], [100, 100, 110, 130]], dtype=np.float32)
    anchors = np.array([
        [0, 0, 10, 10],  # IoU 1 with box 0
        [0, 0, 10, 22],  # IoU 0.45: ignored
        [50, 50, 60, 60],  # background
        [100, 100, 110, 110],  # IoU 0.33 with box 1, but its best anchor: foreground
    ], dtype=np.float32)
    assert match_anchors(anchors, gt).tolist() == [0, -2, -1, 1]
    assert match_anchors(anchors, gt[:0]).tolist() == [-1] * 4


def test_targets_line_up_with_head_channels() -> None:
    # A box equal to one anchor must land on that anchor's location and class channel, so the
    # flattened logits (level, y, x, anchor) read the channel a*K + k of that location.
    spec = tiny()
    k = spec.head.num_classes
    feature_hws = [(256 // s, 320 // s) for s in (8, 16, 32, 64, 128)]
    anchors = np.concatenate(grid_anchors(spec, (256, 320), feature_hws))
    row = 2 * 40 * 9 + 3 * 9 + 4  # P3, y=2, x=3, anchor 4
    cls_t, deltas_t, fg = build_targets(spec, anchors, [anchors[row : row + 1].copy()], [np.array([3])])
    assert cls_t[0, row] == 2 and fg[0, row] and torch.allclose(deltas_t[0, row], torch.zeros(4), atol=1e-6)
    outputs = [torch.zeros(1, 9 * k, h, w) for h, w in feature_hws] + [torch.zeros(1, 36, h, w) for h, w in feature_hws]
    outputs[0][0, 4 * k + 2, 2, 3] = 1.0
    logits, _ = flatten_outputs(tuple(outputs), spec)
    assert logits.shape == (1, len(anchors), k) and torch.nonzero(logits).tolist() == [[0, row, 2]]


def test_freezing_batchnorm_keeps_eval_outputs() -> None:
    spec = tiny()
    model = trainable_model(spec, seed=0)
    with torch.no_grad():  # non-trivial running statistics
        model(torch.randn(2, 3, 64, 64) * 2 + 1)
    model.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = model(x)
        after = freeze_norms(model)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for a, b in zip(before, after, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not DEMO_CHECKPOINT.exists(), reason="demo checkpoint not trained yet")
def test_demo_checkpoint_loads_and_reports_its_map() -> None:
    assert DEMO_CHECKPOINT.stat().st_size <= 15 * 1024 * 1024
    ckpt = torch.load(DEMO_CHECKPOINT, map_location="cpu", weights_only=True)
    assert ckpt["train"]["val"]["mAP"] >= 0.5 and ckpt["train"]["val"]["n_images"] >= 200
    spec, model = load_demo()
    assert spec.name == "tiny" and not model.training
    with torch.no_grad():
        outs = model(torch.zeros(1, 3, 256, 320))
    assert [tuple(o.shape) for o in outs][0] == (1, 9 * spec.head.num_classes, 32, 40)
    assert len(outs) == len(output_names(spec))
