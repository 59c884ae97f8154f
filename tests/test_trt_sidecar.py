"""The engine sidecar check of the TensorRT backend, and the backend's refusal without TensorRT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from retinanet_trt.errors import UsageError
from retinanet_trt.runtime.backends.trt_backend import TrtBackend
from retinanet_trt.runtime.backends.trt_sidecar import check_sidecar, load_sidecar
from retinanet_trt.spec.presets import get_preset
from retinanet_trt.tensorrt.build import SIDECAR_FORMAT
from retinanet_trt.tensorrt.engine import available


def _engine(tmp_path: Path, **changes: Any) -> tuple[Path, dict[str, Any]]:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 64)  # content is never parsed here
    sidecar = {
        "format": SIDECAR_FORMAT,
        "engine_bytes": 64,
        "tensorrt_version": "10.13.0.35",
        "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
        "options": {"version_compatible": False},
        "spec": get_preset("tiny").to_dict(),
        **changes,
    }
    (tmp_path / "m.engine.json").write_text(json.dumps(sidecar))
    return engine, sidecar


def test_matching_host_passes(tmp_path: Path) -> None:
    engine, _ = _engine(tmp_path)
    check_sidecar(load_sidecar(engine), engine, trt_version="10.13.0.35", gpu_name="NVIDIA H100 80GB HBM3")


@pytest.mark.parametrize(
    "trt_version, gpu_name",
    [("10.3.0.30", "NVIDIA H100 80GB HBM3"), ("10.13.0.35", "Orin"), ("11.4.0.106", "Orin")],
)
def test_mismatch_names_both_sides(tmp_path: Path, trt_version: str, gpu_name: str) -> None:
    engine, _ = _engine(tmp_path)
    with pytest.raises(UsageError) as info:
        check_sidecar(load_sidecar(engine), engine, trt_version=trt_version, gpu_name=gpu_name)
    message = str(info.value)
    assert "\n" not in message
    for part in ("10.13.0.35", "NVIDIA H100 80GB HBM3", trt_version, gpu_name, "rebuild"):
        assert part in message


def test_version_compatible_engine_runs_on_newer_tensorrt_only(tmp_path: Path) -> None:
    engine, _ = _engine(tmp_path, options={"version_compatible": True})
    check_sidecar(load_sidecar(engine), engine, trt_version="11.4.0.106", gpu_name="NVIDIA H100 80GB HBM3")
    with pytest.raises(UsageError, match="10.3.0.30"):
        check_sidecar(load_sidecar(engine), engine, trt_version="10.3.0.30", gpu_name="NVIDIA H100 80GB HBM3")


def test_sidecar_of_another_engine(tmp_path: Path) -> None:
    engine, _ = _engine(tmp_path, engine_bytes=65)
    with pytest.raises(UsageError, match="65-byte engine"):
        check_sidecar(load_sidecar(engine), engine, trt_version="10.13.0.35", gpu_name="NVIDIA H100 80GB HBM3")


def test_missing_or_foreign_sidecar(tmp_path: Path) -> None:
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(UsageError, match="x.engine.json not found"):
        load_sidecar(engine)
    (tmp_path / "x.engine.json").write_text("{")
    with pytest.raises(UsageError, match="is not valid JSON.*rebuild the engine"):
        load_sidecar(engine)
    (tmp_path / "x.engine.json").write_text('{"format": "other"}')
    with pytest.raises(UsageError, match="not a retinanet_trt engine sidecar"):
        load_sidecar(engine)


@pytest.mark.skipif(available()[0], reason="TensorRT is usable here")
def test_backend_without_tensorrt_is_a_usage_error(tmp_path: Path) -> None:
    engine, _ = _engine(tmp_path)
    with pytest.raises(UsageError, match="backend trt: "):
        TrtBackend(engine)
