"""The spec inside the ONNX file (metadata_props), so later steps need only the file."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import onnx

from retinanet_trt import __version__
from retinanet_trt.errors import UsageError
from retinanet_trt.spec import ModelSpec

SPEC_KEY = "retinanet_trt.spec"
# The outputs of an end-to-end graph (plugins/end2end.py), which has no per-level head outputs.
END2END_OUTPUTS = ("num_dets", "boxes", "scores", "labels")
INFO_KEY = "retinanet_trt.info"  # JSON: tool version, fixes applied, precision, end2end, ...


def set_metadata(model: onnx.ModelProto, spec: ModelSpec, info: dict[str, Any] | None = None) -> None:
    """Store (or replace) the spec and an info dict in model.metadata_props."""
    entries = {SPEC_KEY: spec.to_json(), INFO_KEY: json.dumps({"tool_version": __version__, **(info or {})}, sort_keys=True)}
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)


def load_onnx(model_or_path: onnx.ModelProto | str | os.PathLike[str]) -> onnx.ModelProto:
    """The ModelProto of a path (UsageError for a missing, truncated or corrupt file), or the proto itself."""
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    path = os.fspath(model_or_path)
    if os.path.isdir(path):
        raise UsageError(f"{path} is a folder, not an ONNX file; give the .onnx file")
    if not os.path.isfile(path):
        raise UsageError(f"ONNX file {path} not found; export one with `trt-export ... -o {path}`")
    if os.path.getsize(path) == 0:  # protobuf parses 0 bytes as an empty model, which says nothing useful
        raise UsageError(f"{path} is empty (0 bytes); re-export it with trt-export")
    try:
        return onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf raises several types for truncated/corrupt files
        raise UsageError(f"{path} is not a readable ONNX file ({type(exc).__name__}); re-export it with trt-export") from exc


def read_spec(model_or_path: onnx.ModelProto | str | os.PathLike[str]) -> ModelSpec:
    """The ModelSpec stored by trt-export, checked against the graph's outputs.

    UsageError if the file carries none, if it is not valid, or if it disagrees with the graph
    (classes, anchors or FPN levels other than the outputs have), so no runner reads a head wrong.
    """
    model = load_onnx(model_or_path)
    where = model_or_path if not isinstance(model_or_path, onnx.ModelProto) else "the ONNX model"
    return _stored_spec(model, str(where))


def _stored_spec(model: onnx.ModelProto, where: str) -> ModelSpec:
    props = {p.key: p.value for p in model.metadata_props}
    if SPEC_KEY not in props:
        raise UsageError(f"{where} has no retinanet_trt spec in its metadata; export it with trt-export, or for a "
                         "file made by another tool pass --spec SPEC.json or --onnx FP32.onnx (the file it was made from)")
    try:
        spec = ModelSpec.from_json(props[SPEC_KEY])
    except UsageError as exc:
        raise UsageError(f"{where}: its stored spec is invalid ({exc}); re-export it with trt-export") from None
    check_spec_matches_outputs(spec, model, str(where))
    return spec


_HEAD_OUTPUT = re.compile(r"^(cls|box)_p(\d+)$")


def check_spec_matches_outputs(spec: ModelSpec, model: onnx.ModelProto, where: str) -> None:
    """check_head_outputs over an ONNX graph's outputs (dims that are not fixed count as unknown)."""
    shapes: dict[str, tuple[int | None, ...]] = {}
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        shapes[out.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    check_head_outputs(spec, shapes, where)


def check_head_outputs(spec: ModelSpec, shapes: dict[str, tuple[int | None, ...]], where: str) -> None:
    """The raw head outputs cls_pL (N, A*K, H, W) and box_pL (N, A*4, H, W) must be exactly the
    spec's levels, with the spec's anchor and class counts where the channel dim is known
    (None or -1: unknown). End-to-end outputs (num_dets, boxes, scores, labels) have no levels.
    UsageError naming the mismatch: the metadata (or --spec) does not describe this graph."""
    heads = {name: m for name in shapes if (m := _HEAD_OUTPUT.match(name))}
    if not heads:
        if set(END2END_OUTPUTS) <= set(shapes):
            return
        raise UsageError(f"{where}: outputs {sorted(shapes)} are neither cls_pL/box_pL per FPN level nor the "
                         f"end-to-end {', '.join(END2END_OUTPUTS)}; export the model with trt-export")
    levels = sorted({int(m.group(2)) for m in heads.values()})
    kinds = {(m.group(1), int(m.group(2))) for m in heads.values()}
    if levels != sorted(spec.levels) or len(kinds) != 2 * len(levels):
        raise UsageError(f"{where}: the spec says FPN levels {spec.levels} but the graph has outputs "
                         f"{sorted(heads)}; the spec does not belong to this graph, re-export it or pass its own spec")
    a, k = spec.head.num_anchors, spec.head.num_classes
    for name, m in heads.items():
        want = a * (k if m.group(1) == "cls" else 4)
        dims = shapes[name]
        channels = dims[1] if len(dims) > 1 and dims[1] is not None and dims[1] >= 0 else None
        if len(dims) != 4 or (channels is not None and channels != want):
            got = f"{channels} channels" if len(dims) == 4 else f"rank {len(dims)}"
            what = f"{a} anchors x {k} classes" if m.group(1) == "cls" else f"{a} anchors x 4"
            raise UsageError(f"{where}: output {name} has {got}, the spec's head needs {want} ({what}); "
                             "the spec does not belong to this graph, re-export it or pass its own spec")


def read_info(model_or_path: onnx.ModelProto | str | os.PathLike[str]) -> dict[str, Any]:
    """The info dict (fixes applied, precision, end2end flag, ...); {} when absent."""
    props = {p.key: p.value for p in load_onnx(model_or_path).metadata_props}
    try:
        info = json.loads(props.get(INFO_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"the ONNX file's {INFO_KEY} metadata is not valid JSON ({exc.msg}); re-export it") from None
    if not isinstance(info, dict):
        raise UsageError(f"the ONNX file's {INFO_KEY} metadata is not a JSON object; re-export it")
    return info


def has_qdq(model_or_path: onnx.ModelProto | str | os.PathLike[str]) -> bool:
    """Whether the graph quantizes (any QuantizeLinear node), whatever its metadata says: such a
    file is scored in simulated Q/DQ, the arithmetic TensorRT's explicit quantization honours."""
    return any(node.op_type == "QuantizeLinear" for node in load_onnx(model_or_path).graph.node)


def _io(values: Any) -> dict[str, tuple[int, tuple[int | str | None, ...]]]:
    """{name: (element type, dims)}; a dim is its value, its symbolic name, or None."""
    out = {}
    for v in values:
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        out[v.name] = (t.elem_type, dims)
    return out


def io_mismatch(model: onnx.ModelProto, reference: onnx.ModelProto) -> str | None:
    """What differs between two graphs' inputs and outputs (names, element types, shapes: a fixed
    dim must be the same number, a symbolic or unknown one symbolic or unknown too), or None when
    they agree. A quantizer keeps its source's inputs and outputs as they are."""
    for kind in ("input", "output"):
        ours = _io(v for v in getattr(model.graph, kind) if v.name not in {i.name for i in model.graph.initializer})
        theirs = _io(v for v in getattr(reference.graph, kind) if v.name not in {i.name for i in reference.graph.initializer})
        if sorted(ours) != sorted(theirs):
            return f"{kind}s {sorted(ours)} vs {sorted(theirs)}"
        for name, (etype, dims) in ours.items():
            ref_type, ref_dims = theirs[name]
            if etype != ref_type:
                return (f"{kind} {name} is {onnx.TensorProto.DataType.Name(etype)} vs "
                        f"{onnx.TensorProto.DataType.Name(ref_type)}")
            def fixed(ds: tuple[int | str | None, ...]) -> list[int | None]:
                return [d if isinstance(d, int) else None for d in ds]

            if fixed(dims) != fixed(ref_dims):
                return f"{kind} {name} has shape {list(dims)} vs {list(ref_dims)}"
    return None


def resolve_spec(model_or_path: onnx.ModelProto | str | os.PathLike[str], *, spec: ModelSpec | None = None,
                 onnx_file: str | os.PathLike[str] | None = None, where: str | None = None) -> ModelSpec:
    """The spec a runner uses for an ONNX file: `spec` when given (a file another tool wrote, e.g.
    ModelOpt's or ORT's quantizer output, carries none), else the one stored in `onnx_file` (the
    FP32 file it was quantized from: the two graphs' inputs and outputs must agree), else the
    file's own (read_spec). The spec is checked against the graph's outputs; UsageError otherwise.
    where: what messages call the model (default: its path)."""
    if spec is not None and onnx_file is not None:
        raise UsageError("give the spec either as --spec SPEC.json or as --onnx FP32.onnx, not both")
    model = load_onnx(model_or_path)
    where = where or (str(model_or_path) if not isinstance(model_or_path, onnx.ModelProto) else "the ONNX model")
    if onnx_file is not None:
        reference = load_onnx(onnx_file)
        differ = io_mismatch(model, reference)
        if differ:
            raise UsageError(f"{where} and --onnx {onnx_file} are not the same network ({differ}); "
                             "give the FP32 file this one was made from")
        spec = read_spec(reference)
    if spec is None:
        return _stored_spec(model, where)
    check_spec_matches_outputs(spec, model, where)
    return spec
