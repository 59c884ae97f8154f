"""What a TensorRT engine file says it is: trt-build's sidecar, its spec, and its bindings checked against it.

An engine is opaque bytes; trt-build writes X.engine.json beside it (TensorRT version, GPU, options,
profiles, the spec). load_sidecar / check_sidecar refuse a missing, foreign or stale sidecar and an
engine built for another TensorRT or GPU; engine_spec finds the spec of an engine built elsewhere
(trtexec, Polygraphy) from --spec or --onnx; check_bindings checks the engine's tensors against
that spec. None of it needs TensorRT: runtime/backends/trt_backend.py runs the engine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import read_json
from retinanet_trt.spec import ModelSpec
from retinanet_trt.tensorrt.build import SIDECAR_FORMAT, sidecar_path

if TYPE_CHECKING:
    from retinanet_trt.tensorrt.engine import TensorInfo


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def load_sidecar(engine_path: Path) -> dict[str, Any]:
    """The JSON trt-build wrote beside the engine (X.engine.json); UsageError if missing or foreign."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise UsageError(f"{path.name} not found beside {engine_path}; trt-build writes it with the engine, keep them together")
    sidecar = read_json(path, "engine sidecar", "rebuild the engine with trt-build")
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise UsageError(f"{path} is not a retinanet_trt engine sidecar; rebuild the engine with trt-build")
    return sidecar


def check_sidecar(sidecar: dict[str, Any], engine_path: Path, *, trt_version: str, gpu_name: str) -> None:
    """UsageError when the engine was built for another TensorRT or GPU, or the sidecar is another engine's.

    A version-compatible engine may run on the same or a newer TensorRT; any engine needs the GPU
    it was built on (no hardware-compatibility builds here).
    """
    built_trt = str(sidecar.get("tensorrt_version"))
    built_gpu = str(sidecar.get("gpu", {}).get("name"))
    version_ok = built_trt == trt_version or (
        bool(sidecar.get("options", {}).get("version_compatible"))
        and _version_tuple(trt_version) >= _version_tuple(built_trt)
    )
    if not version_ok or built_gpu != gpu_name:
        raise UsageError(
            f"{engine_path.name} was built with TensorRT {built_trt} on {built_gpu}, this host has TensorRT "
            f"{trt_version} on {gpu_name}; rebuild it here with trt-build"
        )
    size = engine_path.stat().st_size
    if sidecar.get("engine_bytes") != size:
        raise UsageError(
            f"{engine_path.name}.json describes a {sidecar.get('engine_bytes')}-byte engine, {engine_path.name} has "
            f"{size} bytes; rebuild it with trt-build"
        )


def largest_profile_hw(max_shapes: Sequence[Sequence[int]], h_axis: int = 2) -> tuple[int, int]:
    """(H, W) of the largest input the profiles accept: the max shape with the largest H x W
    (trt-infer's fit and the Triton pre-process model bound images by it)."""
    hi = max(max_shapes, key=lambda s: s[h_axis] * s[h_axis + 1])
    return int(hi[h_axis]), int(hi[h_axis + 1])


def engine_spec(engine: Path, spec: ModelSpec | None, onnx: str | os.PathLike[str] | None
                ) -> tuple[dict[str, Any] | None, ModelSpec]:
    """(sidecar or None, spec) of an engine: trt-build's sidecar, or for an engine built elsewhere
    (trtexec, Polygraphy: no sidecar) the spec given, or the one stored in the ONNX it was built from."""
    if spec is not None and onnx is not None:
        raise UsageError("give the engine's spec either as --spec SPEC.json or as --onnx MODEL.onnx, not both")
    if onnx is not None:
        from retinanet_trt.spec.metadata import load_onnx, read_spec

        spec = read_spec(load_onnx(onnx))
    has_sidecar = sidecar_path(engine).is_file()
    if spec is None and not has_sidecar:
        raise UsageError(
            f"{engine.name} has no sidecar ({sidecar_path(engine).name}), as engines built by trtexec or Polygraphy "
            "do not; pass --spec SPEC.json or --onnx MODEL.onnx (the ONNX it was built from)"
        )
    sidecar = load_sidecar(engine) if has_sidecar else None
    if spec is None:
        assert sidecar is not None
        try:
            spec = ModelSpec.from_dict(sidecar["spec"])
        except (KeyError, UsageError) as exc:
            raise UsageError(f"{sidecar_path(engine).name}: its spec is missing or invalid ({exc}); "
                             "rebuild with trt-build or pass --spec / --onnx") from None
    return sidecar, spec


def check_bindings(spec: ModelSpec, image_input: TensorInfo, outputs: Sequence[TensorInfo], where: str) -> None:
    """One (N, 3, H, W) input and the spec's head outputs (or the end-to-end ones), with the spec's
    channel counts where the engine fixes them: a wrong --spec fails here, not as wrong boxes."""
    from retinanet_trt.spec.metadata import check_head_outputs

    shape = tuple(image_input.shape)
    if image_input.dtype == np.uint8:  # trt-export --input-format uint8: (N, H, W, 4), normalised in the graph
        if len(shape) != 4 or shape[3] not in (4, -1):
            raise UsageError(f"{where}: uint8 input {image_input.name} has shape {list(shape)}; this backend feeds "
                             "(N, H, W, 4) uint8 images (RGB + valid mask, trt-export --input-format uint8)")
    elif len(shape) != 4 or shape[1] not in (3, -1):
        raise UsageError(f"{where}: input {image_input.name} has shape {list(shape)}; this backend feeds (N, 3, H, W) images")
    check_head_outputs(spec, {t.name: tuple(t.shape) for t in outputs}, where)
