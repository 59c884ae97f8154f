"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores: keep each worker from oversubscribing them.
torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


CALIB_CACHE_ENV = "RETINANET_TRT_CACHE_DIR"  # retinanet_trt.calib.cache.CACHE_DIR_ENV (not imported here)


@pytest.fixture(scope="session", autouse=True)
def _session_calibration_cache(tmp_path_factory):  # type: ignore[no-untyped-def]
    """trt-calib's default cache folder is ~/.cache/retinanet-trt: tests (and the commands they
    start, which inherit the variable) never write there; module fixtures share this one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CALIB_CACHE_ENV, str(tmp_path_factory.mktemp("calib-cache-session")))
        yield


@pytest.fixture(autouse=True)
def _test_calibration_cache(tmp_path_factory, monkeypatch):  # type: ignore[no-untyped-def]
    """Each test calibrates into a cache folder of its own, so no test reuses another's ranges or
    reports by accident (tests of the reuse name their folder, or share a module fixture's)."""
    monkeypatch.setenv(CALIB_CACHE_ENV, str(tmp_path_factory.mktemp("calib-cache")))


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A dynamic tiny-preset ONNX with random weights: (path, spec)."""
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx
    from retinanet_trt.model import build_model
    from retinanet_trt.spec.presets import get_preset

    spec = get_preset("tiny")
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    export_onnx(build_model(spec, seed=0), spec, path, ExportOptions(input_hw=(128, 160), dynamic=True))
    return path, spec
