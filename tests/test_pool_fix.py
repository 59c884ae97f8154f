"""ceil_mode pooling rewritten to explicit padding must equal PyTorch for every input size."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from retinanet_trt.errors import UsageError
from retinanet_trt.export.pool_fix import fix_ceil_mode_pools


def _export(module: nn.Module, hw: tuple[int, int], dynamic: bool) -> onnx.ModelProto:
    buf = io.BytesIO()
    axes = {"x": {2: "h", 3: "w"}, "y": {2: "oh", 3: "ow"}} if dynamic else None
    torch.onnx.export(module.eval(), (torch.zeros(1, 2, *hw),), buf, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes=axes)
    return onnx.load_from_string(buf.getvalue())


def _ceil_attrs(model: onnx.ModelProto) -> list[int]:
    return [a.i for n in model.graph.node for a in n.attribute if a.name == "ceil_mode"]


def _check_sizes(module: nn.Module, fixed: onnx.ModelProto, sizes: list[tuple[int, int]]) -> None:
    sess = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for h, w in sizes:
        x = rng.standard_normal((1, 2, h, w)).astype(np.float32)
        want = module(torch.from_numpy(x)).detach().numpy()
        got = sess.run(None, {"x": x})[0]
        assert got.shape == want.shape, (h, w, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f"size {h}x{w}")


CAFFE_STEM_POOL = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)


def test_caffe_stem_pool_equals_pytorch_for_every_size_33_to_96() -> None:
    fixed, names = fix_ceil_mode_pools(_export(CAFFE_STEM_POOL, (64, 64), dynamic=True))
    assert names and _ceil_attrs(fixed) == [0]
    sizes = [(n, n) for n in range(33, 97)] + [(n, n + 1) for n in range(33, 96)] + [(96, 33), (33, 96)]
    _check_sizes(CAFFE_STEM_POOL, fixed, sizes)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("padding", [0, 1])
def test_average_pool_ceil_mode_divisor_matches_pytorch(count_include_pad: bool, padding: int) -> None:
    pool = nn.AvgPool2d(kernel_size=3, stride=2, padding=padding, ceil_mode=True, count_include_pad=count_include_pad)
    fixed, names = fix_ceil_mode_pools(_export(pool, (40, 40), dynamic=True))
    assert names and _ceil_attrs(fixed) == [0]
    _check_sizes(pool, fixed, [(n, n + 3) for n in range(33, 60)])


def test_pool_whose_last_window_can_start_in_padding_needs_a_static_size() -> None:
    # k=2, s=2, p=1: PyTorch drops a last window starting in the right padding, which depends on
    # the input length; static exports get the exact pad, dynamic ones are refused.
    pool = nn.MaxPool2d(kernel_size=2, stride=2, padding=1, ceil_mode=True)
    for n in range(33, 41):
        fixed, _ = fix_ceil_mode_pools(_export(pool, (n, n + 1), dynamic=False))
        _check_sizes(pool, fixed, [(n, n + 1)])
    with pytest.raises(UsageError, match="static input size"):
        fix_ceil_mode_pools(_export(pool, (40, 40), dynamic=True))


def test_floor_mode_pools_are_left_alone() -> None:
    model = _export(nn.MaxPool2d(3, 2, 1), (32, 32), dynamic=False)
    before = model.SerializeToString()
    fixed, names = fix_ceil_mode_pools(model)
    assert names == [] and fixed.SerializeToString() == before
