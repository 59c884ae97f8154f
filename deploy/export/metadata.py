"""The spec inside the ONNX file (metadata_props), so later steps need only the file."""

from __future__ import annotations

import json
import os
from typing import Any

import onnx

from retinanet_trt import __version__
from retinanet_trt.errors import UsageError
from retinanet_trt.spec import ModelSpec

SPEC_KEY = "retinanet_trt.spec"
INFO_KEY = "retinanet_trt.info"  # JSON: tool version, fixes applied, precision, end2end, ...


def set_metadata(model: onnx.ModelProto, spec: ModelSpec, info: dict[str, Any] | None = None) -> None:
    """Store (or replace) the spec and an info dict in model.metadata_props."""
    entries = {SPEC_KEY: spec.to_json(), INFO_KEY: json.dumps({"tool_version": __version__, **(info or {})}, sort_keys=True)}
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)


def _load(model_or_path: onnx.ModelProto | str | os.PathLike[str]) -> onnx.ModelProto:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    path = os.fspath(model_or_path)
    if not os.path.isfile(path):
        raise UsageError(f"ONNX file {path} not found; export one with `trt-export ... -o {path}`")
    try:
        return onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf raises several types for truncated/corrupt files
        raise UsageError(f"{path} is not a readable ONNX file ({type(exc).__name__}); re-export it with trt-export") from exc


def read_spec(model_or_path: onnx.ModelProto | str | os.PathLike[str]) -> ModelSpec:
    """The ModelSpec stored by trt-export; a UsageError if the file carries none."""
    model = _load(model_or_path)
    props = {p.key: p.value for p in model.metadata_props}
    if SPEC_KEY not in props:
        raise UsageError("the ONNX file has no retinanet_trt spec in its metadata; export it with trt-export")
    return ModelSpec.from_json(props[SPEC_KEY])


def read_info(model_or_path: onnx.ModelProto | str | os.PathLike[str]) -> dict[str, Any]:
    """The info dict (fixes applied, precision, end2end flag, ...); {} when absent."""
    props = {p.key: p.value for p in _load(model_or_path).metadata_props}
    return json.loads(props.get(INFO_KEY, "{}"))
