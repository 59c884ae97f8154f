"""Build a TensorRT engine from an ONNX file: the engine, its JSON sidecar and the engine inspector's layers.

    m.fp16.engine         the serialized engine (written to a temporary name, then renamed)
    m.fp16.engine.json    sidecar: TensorRT/CUDA versions, GPU, precision, shapes, hashes, build time, spec
    m.fp16.layers.json    engine inspector output (LayerInformationFormat.JSON, DETAILED verbosity)

Precision is already in the ONNX file (retinanet_trt.calib makes the FP16 / INT8 Q/DQ files); it
is read from the graph and recorded. TensorRT is reached only
through retinanet_trt.tensorrt.engine, so this module imports without it.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from retinanet_trt import __version__
from retinanet_trt.errors import UsageError
from retinanet_trt.fileio import check_writable, sha256_file, write_bytes_atomic, write_json_atomic
from retinanet_trt.spec import ModelSpec
from retinanet_trt.spec.metadata import load_onnx, read_info, resolve_spec
from retinanet_trt.tensorrt.engine import Profile, ShapeRange

PRECISIONS = ("fp32", "fp16", "int8")
SIDECAR_FORMAT = "retinanet_trt.engine/1"
MAX_BUILDER_OPT_LEVEL = 5  # TensorRT 10.x and 11.x both accept 0..5


def sidecar_path(engine: str | os.PathLike[str]) -> Path:
    """X.engine -> X.engine.json."""
    path = Path(engine)
    return path.with_name(path.name + ".json")


def layers_path(engine: str | os.PathLike[str]) -> Path:
    """X.engine -> X.layers.json."""
    return Path(engine).with_suffix(".layers.json")


def onnx_inputs(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Graph inputs (initializers excluded) -> dims, None where the dimension is symbolic."""
    initializers = {init.name for init in model.graph.initializer}
    inputs: dict[str, tuple[int | None, ...]] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        inputs[value.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)
    return inputs


def _fmt(dims: Sequence[int | None]) -> str:
    return "x".join("?" if d is None else str(d) for d in dims)


MAX_WORKSPACE_GB = 1024  # above any GPU's memory: a typo
MAX_SHAPE_DIM = 16384  # per dimension of --shapes: larger is a typo that would exhaust the builder


def resolve_profiles(
    inputs: dict[str, tuple[int | None, ...]], shapes: Sequence[ShapeRange] | None, *, dla: bool = False
) -> list[Profile]:
    """One optimization profile per (min, opt, max) range, checked against the ONNX input's dims.

    A static input needs no profile; a dynamic one needs at least one range. DLA has no dynamic
    shapes, so there every range must have min == opt == max.
    """
    if len(inputs) != 1:
        raise UsageError(f"expected one network input, the ONNX file has {len(inputs)}: {', '.join(inputs) or 'none'}")
    (name, dims), = inputs.items()
    if not shapes:
        if any(d is None for d in dims):
            raise UsageError(
                f"input {name} has dynamic dimensions {_fmt(dims)}; give --shapes MIN/OPT/MAX, "
                f"e.g. --shapes 1x3x320x320/1x3x480x640/1x3x800x1088"
            )
        return []
    if all(d is not None for d in dims):
        raise UsageError(f"input {name} is static ({_fmt(dims)}); --shapes needs a model exported with --dynamic")
    profiles: list[Profile] = []
    for lo, opt, hi in shapes:
        text = f"{_fmt(lo)}/{_fmt(opt)}/{_fmt(hi)}"
        if not len(lo) == len(opt) == len(hi) == len(dims):
            raise UsageError(f"--shapes {text}: input {name} has {len(dims)} dimensions ({_fmt(dims)})")
        for axis, fixed in enumerate(dims):
            if fixed is not None and not lo[axis] == opt[axis] == hi[axis] == fixed:
                raise UsageError(f"--shapes {text}: dimension {axis} of input {name} is fixed at {fixed}")
            if not 0 < lo[axis] <= opt[axis] <= hi[axis]:
                raise UsageError(f"--shapes {text}: each dimension needs 0 < min <= opt <= max")
            if hi[axis] > MAX_SHAPE_DIM:
                raise UsageError(f"--shapes {text}: {hi[axis]} is larger than any input a detector takes "
                                 f"(at most {MAX_SHAPE_DIM} per dimension)")
        if dla and not lo == opt == hi:
            raise UsageError(f"--shapes {text}: DLA has no dynamic shapes; give min = opt = max")
        profiles.append({name: (tuple(lo), tuple(opt), tuple(hi))})
    return profiles


def detect_precision(model: onnx.ModelProto) -> str:
    """What the graph computes in: "int8" with Q/DQ nodes, "fp16" with FP16 weights or casts, else "fp32".

    Read from the graph, not the metadata, so a file converted by any tool is described correctly.
    """
    ops = {node.op_type for node in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "int8"
    fp16 = onnx.TensorProto.FLOAT16
    if any(init.data_type == fp16 for init in model.graph.initializer):
        return "fp16"
    for node in model.graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in node.attribute):
            return "fp16"
    return "fp32"


def plan_profiles(model: onnx.ModelProto, shapes: Sequence[ShapeRange] | None, spec: ModelSpec,
                  dla: bool = False) -> list[Profile]:
    """resolve_profiles for the model's input, each H and W checked against the spec's padding."""
    profiles = resolve_profiles(onnx_inputs(model), shapes, dla=dla)
    uint8 = any(i.type.tensor_type.elem_type == onnx.TensorProto.UINT8 for i in model.graph.input)
    check_profile_padding(profiles, spec, nhwc=uint8)
    return profiles


def check_profile_padding(profiles: Sequence[Profile], spec: ModelSpec, nhwc: bool = False) -> None:
    """UsageError for a profile H or W the pre-process never feeds: it pads every image to a
    multiple of spec.preprocess.size_divisibility, so min, opt and max must be such multiples.
    nhwc: the input is (N, H, W, 4) uint8 (trt-export --input-format uint8), else (N, 3, H, W)."""
    div = spec.preprocess.size_divisibility
    if div <= 1:
        return
    h = 1 if nhwc else 2
    for profile in profiles:
        for lo, opt, hi in profile.values():
            sides = [s for shape in (lo, opt, hi) for s in shape[h:h + 2]]
            if any(s % div for s in sides):
                def up(shape: tuple[int, ...]) -> tuple[int, ...]:  # the same shape, H and W padded
                    return tuple(-(-d // div) * div if h <= i < h + 2 else d for i, d in enumerate(shape))
                raise UsageError(f"--shapes {_fmt(lo)}/{_fmt(opt)}/{_fmt(hi)}: H and W must be multiples of {div} "
                                 f"(the pre-process pads every image to one), e.g. {_fmt(up(lo))}/{_fmt(up(opt))}/"
                                 f"{_fmt(up(hi))}")


def check_options(
    *,
    precision: str,
    workspace_gb: float | None,
    builder_opt_level: int | None,
    dla_core: int | None,
    gpu_fallback: bool,
    plugin_libs: Sequence[str | os.PathLike[str]],
    calib_cache: str | os.PathLike[str] | None,
) -> None:
    """UsageError for option values and combinations TensorRT would reject later (or silently ignore)."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision {precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
    if workspace_gb is not None and not 0 < workspace_gb <= MAX_WORKSPACE_GB:  # nan and inf fail too
        raise UsageError(f"--workspace {workspace_gb}: give a positive size in GiB, at most {MAX_WORKSPACE_GB}, e.g. --workspace 2")
    if builder_opt_level is not None and not 0 <= builder_opt_level <= MAX_BUILDER_OPT_LEVEL:
        raise UsageError(f"--builder-opt-level {builder_opt_level}: use 0..{MAX_BUILDER_OPT_LEVEL} (3 is TensorRT's default)")
    if dla_core is not None and dla_core < 0:
        raise UsageError(f"--dla-core {dla_core}: DLA cores are numbered from 0")
    if dla_core is not None and precision == "fp32":
        raise UsageError("DLA runs FP16 or INT8 only; add --fp16 or --int8 to --dla-core")
    if gpu_fallback and dla_core is None:
        raise UsageError("--gpu-fallback only applies with --dla-core N")
    for lib in plugin_libs:
        if not Path(lib).is_file():
            raise UsageError(f"plugin library {lib} not found")
    if calib_cache is not None and not Path(calib_cache).is_file():
        raise UsageError(f"calibration cache {calib_cache} not found")


def build_engine(
    onnx_path: str | os.PathLike[str],
    out_engine: str | os.PathLike[str],
    *,
    precision: str | None = None,
    shapes: Sequence[ShapeRange] | None = None,
    workspace_gb: float | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    builder_opt_level: int | None = None,
    dla_core: int | None = None,
    gpu_fallback: bool = False,
    version_compatible: bool = False,
    plugin_libs: Sequence[str | os.PathLike[str]] = (),
    calib_cache: str | os.PathLike[str] | None = None,
    verbose: bool = False,
    spec: ModelSpec | None = None,
) -> dict[str, Any]:
    """Build `onnx_path` into `out_engine` plus its sidecar and layer JSON; return the sidecar dict.

    precision: what the ONNX file holds (None: read it from the graph); a mismatch is a UsageError.
    spec: for an ONNX without this project's metadata (another quantizer's output; checked against
    the graph's outputs); the sidecar carries it, so the engine describes itself.
    Raises UsageError for bad inputs (before any TensorRT work), TrtUnavailable without TensorRT or
    a GPU, TrtError when TensorRT rejects the model. Never leaves a partial engine behind.
    """
    from retinanet_trt.tensorrt import cuda as cuda_rt
    from retinanet_trt.tensorrt import engine as trt_engine

    onnx_file = Path(onnx_path)
    model = load_onnx(onnx_file)
    spec = resolve_spec(model, spec=spec, where=str(onnx_file))
    found = detect_precision(model)
    if precision is not None and precision != found:
        raise UsageError(f"{onnx_file} holds a model in {found}, not {precision}")
    precision = found
    check_options(
        precision=precision,
        workspace_gb=workspace_gb,
        builder_opt_level=builder_opt_level,
        dla_core=dla_core,
        gpu_fallback=gpu_fallback,
        plugin_libs=plugin_libs,
        calib_cache=calib_cache,
    )
    profiles = plan_profiles(model, shapes, spec, dla=dla_core is not None)
    engine_path = check_writable(out_engine)
    for extra in (sidecar_path(engine_path), layers_path(engine_path)):
        check_writable(extra)
    if timing_cache is not None:
        check_writable(timing_cache)

    trt_engine.require()
    options = trt_engine.BuildOptions(
        precision=precision,
        profiles=profiles,
        workspace_bytes=None if workspace_gb is None else int(workspace_gb * 2**30),
        timing_cache=Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else None,
        builder_opt_level=builder_opt_level,
        dla_core=dla_core,
        gpu_fallback=gpu_fallback,
        version_compatible=version_compatible,
        plugin_libs=[os.fspath(p) for p in plugin_libs],
        verbose=verbose,
    )
    started = time.perf_counter()
    result = trt_engine.build_serialized(onnx_file, options)
    build_seconds = time.perf_counter() - started

    write_bytes_atomic(engine_path, result.engine)  # temporary name, then rename: never a partial engine
    write_bytes_atomic(layers_path(engine_path), result.layers_json.encode())
    if timing_cache is not None:
        write_bytes_atomic(timing_cache, result.timing_cache)

    device = cuda_rt.device_info(0)
    sidecar: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "engine": engine_path.name,
        "engine_bytes": len(result.engine),
        "engine_sha256": hashlib.sha256(result.engine).hexdigest(),
        "tensorrt_version": trt_engine.version(),
        "cuda_runtime_version": device["cuda_runtime_version"],
        "cuda_driver_version": device["cuda_driver_version"],
        "gpu": {k: device[k] for k in ("name", "compute_capability", "total_memory_gb", "integrated")},
        "precision": precision,
        "strongly_typed": result.strongly_typed,
        "profiles": [{name: [list(d) for d in rng] for name, rng in p.items()} for p in profiles],
        "io": [t.to_dict() for t in result.io],
        "onnx": {"file": onnx_file.name, "sha256": sha256_file(onnx_file)},
        "calib_cache": None if calib_cache is None else {"file": Path(calib_cache).name, "sha256": sha256_file(calib_cache)},
        "options": {
            "workspace_gb": workspace_gb,
            "builder_opt_level": builder_opt_level,
            "dla_core": dla_core,
            "gpu_fallback": gpu_fallback,
            "version_compatible": version_compatible,
            "plugin_libs": [os.path.realpath(p) for p in plugin_libs],
            "timing_cache": None if timing_cache is None else os.fspath(timing_cache),
            "timing_cache_reused": result.timing_cache_reused,
        },
        "build_seconds": round(build_seconds, 3),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tool_version": __version__,
        "onnx_info": read_info(model),
        "spec": spec.to_dict(),
    }
    write_json_atomic(sidecar_path(engine_path), sidecar)
    return sidecar

