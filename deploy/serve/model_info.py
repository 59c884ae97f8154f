"""What a served model is: an ONNX file (its stored spec and graph I/O) or a TensorRT engine (its
trt-build sidecar: spec, I/O, profiles, TensorRT version), read without ONNX Runtime or TensorRT."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import sha256_file
from retinanet_trt.spec import ModelSpec
from retinanet_trt.spec.metadata import END2END_OUTPUTS

# ONNX TensorProto element types and numpy dtype names -> Triton data types.
_ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 6: "TYPE_INT32", 7: "TYPE_INT64", 2: "TYPE_UINT8", 9: "TYPE_BOOL"}
_NUMPY_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL", "int8": "TYPE_INT8"}


@dataclass
class Tensor:
    """One network I/O tensor: Triton data type and full shape (batch first), -1 where dynamic."""

    name: str
    data_type: str
    shape: list[int]


@dataclass
class NetworkInfo:
    path: Path
    kind: str  # "onnx" | "engine"
    spec: ModelSpec
    input: Tensor
    outputs: list[Tensor]
    precision: str = "fp32"
    end2end: bool = False
    sidecar: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""

    @property
    def fixed_batch(self) -> int | None:
        return self.input.shape[0] if self.input.shape[0] > 0 else None

    @property
    def fixed_input_hw(self) -> tuple[int, int] | None:
        h, w = self.input.shape[2], self.input.shape[3]
        return (h, w) if h > 0 and w > 0 else None

    def profile_limits(self) -> tuple[int | None, tuple[int, int] | None, tuple[int, int] | None]:
        """(largest batch, smallest H x W, largest H x W) the engine's profiles allow; Nones for ONNX."""
        profiles = self.sidecar.get("profiles") or []
        ranges = [p[self.input.name] for p in profiles if self.input.name in p]
        if not ranges:
            return None, None, None
        from retinanet_trt.runtime.backends.trt_sidecar import largest_profile_hw

        lo = min((r[0] for r in ranges), key=lambda s: s[2] * s[3])
        return max(r[2][0] for r in ranges), (int(lo[2]), int(lo[3])), largest_profile_hw([r[2] for r in ranges])

    @property
    def tensorrt_version(self) -> str | None:
        return self.sidecar.get("tensorrt_version")


def _onnx_shape(value_info: Any) -> list[int]:
    dims = value_info.type.tensor_type.shape.dim
    return [int(d.dim_value) if d.HasField("dim_value") else -1 for d in dims]


def read_onnx(path: Path) -> NetworkInfo:
    from retinanet_trt.spec.metadata import load_onnx, read_info, read_spec

    model = load_onnx(path)
    spec = read_spec(model)
    info = read_info(model)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UsageError(f"{path} has {len(inputs)} inputs; a retinanet_trt ONNX has one (images)")

    def tensor(v: Any) -> Tensor:
        elem = v.type.tensor_type.elem_type
        if elem not in _ONNX_TYPES:
            raise UsageError(f"{path}: tensor {v.name} has ONNX element type {elem}, which Triton configs here do not map")
        return Tensor(v.name, _ONNX_TYPES[elem], _onnx_shape(v))

    outputs = [tensor(o) for o in model.graph.output]
    return NetworkInfo(path=path, kind="onnx", spec=spec, input=tensor(inputs[0]), outputs=outputs,
                       precision=str(info.get("precision", "fp32")), end2end=_is_end2end(outputs), sha256=sha256_file(path))


def read_engine(path: Path) -> NetworkInfo:
    from retinanet_trt.runtime.backends.trt_sidecar import load_sidecar

    sidecar = load_sidecar(path)
    spec = ModelSpec.from_dict(sidecar.get("spec") or {})
    io = sidecar.get("io") or []
    if not io:
        raise UsageError(f"{path}'s sidecar lists no I/O tensors; rebuild it with trt-build")
    try:
        tensors = [(t["mode"], Tensor(t["name"], _NUMPY_TYPES[t["dtype"]], [int(d) for d in t["shape"]])) for t in io]
    except KeyError as exc:
        raise UsageError(f"{path}'s sidecar has an I/O entry without {exc} or of a type Triton configs here do not map") from None
    inputs = [t for mode, t in tensors if mode == "input"]
    outputs = [t for mode, t in tensors if mode == "output"]
    if len(inputs) != 1:
        raise UsageError(f"{path} has {len(inputs)} inputs; a retinanet_trt engine has one (images)")
    return NetworkInfo(path=path, kind="engine", spec=spec, input=inputs[0], outputs=outputs,
                       precision=str(sidecar.get("precision", "fp32")), end2end=_is_end2end(outputs), sidecar=sidecar,
                       sha256=sha256_file(path))


def _is_end2end(outputs: list[Tensor]) -> bool:
    return {o.name for o in outputs} >= set(END2END_OUTPUTS)


def read_network(model: str | os.PathLike[str]) -> NetworkInfo:
    """An .onnx or .engine (with its sidecar) -> NetworkInfo; UsageError for anything else."""
    path = Path(model)
    if not path.is_file():
        raise UsageError(f"model {path} not found; give an .onnx (trt-export) or an .engine (trt-build)")
    if path.suffix == ".onnx":
        info = read_onnx(path)
    elif path.suffix in (".engine", ".plan"):
        info = read_engine(path)
    else:
        raise UsageError(f"model {path}: give an .onnx file or a TensorRT .engine, not {path.suffix or 'a file without suffix'}")
    if len(info.input.shape) != 4 or info.input.shape[1] not in (3, -1):
        raise UsageError(f"{path}: input {info.input.name} has shape {info.input.shape}; expected (N, 3, H, W)")
    return info
