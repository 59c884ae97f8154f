"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores: keep each worker from oversubscribing them.
torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A dynamic tiny-preset ONNX with random weights: (path, spec)."""
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx
    from retinanet_trt.model import build_model
    from retinanet_trt.presets import get_preset

    spec = get_preset("tiny")
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    export_onnx(build_model(spec, seed=0), spec, path, ExportOptions(input_hw=(128, 160), dynamic=True))
    return path, spec
