"""The one module that imports TensorRT: parse, configure, build, serialize, deserialize, bind, run, profile.

Everything TensorRT-specific stays here and stays thin, so the rest of the project handles plain
Python values (bytes, tuples, NumPy dtypes, integer device addresses). Only API present in
TensorRT 10.3 (JetPack 6), 10.13 (JetPack 7) and 11.4 is used unguarded; anything else is
feature-detected with hasattr/getattr. tests/test_trt_api_names.py checks that against the
name lists of those versions and runs mypy over this module with tensorrt-stubs.

TensorRT is imported inside the functions, so importing this module works without it; each import
sits in `with requires("tensorrt")` (deploy/optional.py), so a missing TensorRT is one
line naming the install, not a traceback.

Precision lives in the ONNX file (FP16 tensors, INT8 Q/DQ nodes), so networks are strongly typed:
always on TensorRT 11, through the STRONGLY_TYPED creation flag on 10.x. The one exception is a
DLA build on 10.x, where DLA still needs the FP16/INT8 builder flags of a weakly typed network.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from retinanet_trt.optional import MissingPackage, install_hint, requires

if TYPE_CHECKING:
    import tensorrt as trt

Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]  # (min, opt, max) of one input in one optimization profile
Profile = dict[str, ShapeRange]  # input name -> range; one dict per optimization profile

# TensorRT I/O types the backend can stage in host memory, by DataType member name.
_NUMPY_DTYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}

# Plugin libraries already loaded in this process: loading one twice registers its creators twice.
_loaded_plugin_libs: set[str] = set()


class TrtUnavailable(RuntimeError):
    """TensorRT or a GPU is missing here; the message says which and what to do."""


class TrtError(RuntimeError):
    """TensorRT refused the model or engine; the message lists TensorRT's own errors."""


# ---------------------------------------------------------------------------------------- presence
def available() -> tuple[bool, str]:
    """(True, "TensorRT x on GPU y") when TensorRT and a CUDA GPU are usable, else (False, the reason)."""
    try:
        with requires("tensorrt"):  # also an OSError: the wheel is there but libnvinfer cannot be loaded
            import tensorrt as trt
    except MissingPackage as exc:
        return False, str(exc)
    # `tensorrt-stubs` alone makes `import tensorrt` succeed as an empty namespace package.
    if not hasattr(trt, "Builder"):
        return False, f"only type stubs of TensorRT are installed here, not TensorRT itself: {install_hint('tensorrt')}"
    from retinanet_trt.tensorrt import cuda as cuda_rt

    ok, why = cuda_rt.gpu_available()
    if not ok:
        return False, f"TensorRT {version()} is installed but {why}"
    return True, f"TensorRT {version()} on {why}"


def require() -> None:
    """Raise TrtUnavailable (with the reason) unless TensorRT and a GPU are usable."""
    ok, why = available()
    if not ok:
        raise TrtUnavailable(why)


def version() -> str:
    """TensorRT's version string, e.g. "10.13.0.35"."""
    with requires("tensorrt"):
        import tensorrt as trt

    # __version__ comes from the Python package, not the compiled bindings the name lists cover.
    return str(getattr(trt, "__version__", "unknown"))


# ---------------------------------------------------------------------------------------- helpers
def _make_logger(errors: list[str], verbose: bool) -> trt.ILogger:
    """A logger that keeps TensorRT's error messages (for our exceptions) and prints warnings if verbose."""
    with requires("tensorrt"):
        import tensorrt as trt

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # pybind11 trampolines need the base initialised explicitly

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                errors.append(msg)
            elif verbose and severity <= trt.ILogger.Severity.WARNING:
                print(f"[TensorRT] {msg}", file=sys.stderr)

    return _Logger()


def _dims(shape: Sequence[int]) -> trt.Dims:
    with requires("tensorrt"):
        import tensorrt as trt

    return trt.Dims([int(d) for d in shape])


def _shape(dims: trt.Dims) -> Shape:
    return tuple(int(dims[i]) for i in range(len(dims)))


def _numpy_dtype(dtype: trt.DataType) -> np.dtype[Any]:
    if dtype.name not in _NUMPY_DTYPES:
        raise TrtError(f"I/O tensors of type {dtype.name} are not supported; keep FP32/FP16/INT32/INT64 I/O")
    return np.dtype(_NUMPY_DTYPES[dtype.name])


def _last_errors(errors: list[str], limit: int = 3) -> str:
    return "; ".join(errors[-limit:]) if errors else "no message from TensorRT (run with --verbose)"


def load_plugin_libraries(paths: Sequence[str | os.PathLike[str]]) -> None:
    """Load plugin shared libraries so their creators are registered before parsing or deserializing."""
    with requires("tensorrt"):
        import tensorrt as trt

    from retinanet_trt.plugins.library import check_plugin_library
    from retinanet_trt.plugins.library import load_plugin_libraries as dlopen_plugin_libraries

    registry = trt.get_plugin_registry()
    for path in paths:
        real = str(check_plugin_library(path))  # one-line errors for missing / non-library files
        if real in _loaded_plugin_libs:
            continue
        if hasattr(registry, "load_library"):
            # TensorRT's own loader where the bindings have it; otherwise a global dlopen lets the
            # library's static plugin registration run, which is how older releases load plugins.
            if registry.load_library(real) is None:
                raise TrtError(f"TensorRT could not load plugin library {path}")
        else:
            dlopen_plugin_libraries([real])
        _loaded_plugin_libs.add(real)


@dataclass(frozen=True)
class TensorInfo:
    """One engine I/O tensor; shape has -1 where the dimension is dynamic."""

    name: str
    is_input: bool
    dtype: np.dtype[Any]
    shape: Shape

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mode": "input" if self.is_input else "output", "dtype": str(self.dtype), "shape": list(self.shape)}


def _io_tensors(engine: trt.ICudaEngine) -> list[TensorInfo]:
    with requires("tensorrt"):
        import tensorrt as trt

    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        tensors.append(
            TensorInfo(
                name=name,
                is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                dtype=_numpy_dtype(engine.get_tensor_dtype(name)),
                shape=_shape(engine.get_tensor_shape(name)),
            )
        )
    return tensors


# ---------------------------------------------------------------------------------------- build
@dataclass
class BuildOptions:
    """Builder settings; precision is only recorded (it lives in the ONNX) except for DLA on 10.x."""

    precision: str = "fp32"  # fp32 | fp16 | int8: what the ONNX file holds
    profiles: list[Profile] = field(default_factory=list)  # empty: the ONNX input shapes are static
    workspace_bytes: int | None = None
    timing_cache: bytes | None = None  # a previous build's cache; None starts an empty one
    builder_opt_level: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False
    version_compatible: bool = False
    plugin_libs: list[str] = field(default_factory=list)
    verbose: bool = False


@dataclass
class BuildResult:
    engine: bytes
    layers_json: str  # engine inspector, LayerInformationFormat.JSON
    timing_cache: bytes
    io: list[TensorInfo]
    strongly_typed: bool
    timing_cache_reused: bool


def build_serialized(onnx_path: str | os.PathLike[str], options: BuildOptions) -> BuildResult:
    """Parse the ONNX file, build and serialize an engine, and describe its layers; TrtError on failure."""
    require()
    with requires("tensorrt"):
        import tensorrt as trt

    errors: list[str] = []
    logger = _make_logger(errors, options.verbose)
    trt.init_libnvinfer_plugins(logger, "")  # TensorRT's own plugins (e.g. EfficientNMS_TRT)
    load_plugin_libraries(options.plugin_libs)

    builder = trt.Builder(logger)
    # 10.x still has weak typing (the FP16 flag exists); DLA there needs it. 11.x is always strongly typed.
    weak_typing_dla = options.dla_core is not None and hasattr(trt.BuilderFlag, "FP16")
    flags = 0 if weak_typing_dla else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)

    parser = trt.OnnxParser(network, logger)
    if options.dla_core is not None and hasattr(trt.OnnxParserFlag, "ADJUST_FOR_DLA"):
        parser.set_flag(trt.OnnxParserFlag.ADJUST_FOR_DLA)  # 10.16+: reshapes layers so more fit on DLA
    if not parser.parse_from_file(os.fspath(onnx_path)):
        found = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            found.append(f"{err.node_name() or f'node {err.node()}'}: {err.desc()}")
        raise TrtError(f"TensorRT could not parse {os.fspath(onnx_path)}: {'; '.join(found) or _last_errors(errors)}")

    config = builder.create_builder_config()
    # DETAILED keeps layer names and tactics in the engine: the inspector and per-level attribution need them.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if options.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.builder_opt_level is not None:
        config.builder_optimization_level = options.builder_opt_level
    for ranges in options.profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in ranges.items():
            profile.set_shape(name, _dims(lo), _dims(opt), _dims(hi))
        config.add_optimization_profile(profile)
    # create_timing_cache gives None for a corrupt file; set_timing_cache refuses one from another
    # GPU or TensorRT version. Either way the build starts from an empty cache instead of failing.
    cache = config.create_timing_cache(options.timing_cache) if options.timing_cache else None
    timing_cache_reused = cache is not None and config.set_timing_cache(cache, False)
    if not timing_cache_reused:
        config.set_timing_cache(config.create_timing_cache(b""), False)
    if options.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        if options.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        if weak_typing_dla and hasattr(trt.BuilderFlag, "FP16"):
            config.set_flag(trt.BuilderFlag.FP16)
        if weak_typing_dla and options.precision == "int8" and hasattr(trt.BuilderFlag, "INT8"):
            config.set_flag(trt.BuilderFlag.INT8)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if options.plugin_libs:
            # A version-compatible engine must carry its plugin libraries to run on a newer runtime.
            config.plugins_to_serialize = [os.path.realpath(p) for p in options.plugin_libs]

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrtError(f"TensorRT could not build {os.fspath(onnx_path)}: {_last_errors(errors)}")
    engine_bytes = bytes(serialized)
    timing_cache = bytes(config.get_timing_cache().serialize())

    # Loaded back only for the inspector's layer JSON, with the settings the backend will use.
    runtime = trt.Runtime(logger)
    if options.version_compatible:
        runtime.engine_host_code_allowed = True
    if options.dla_core is not None:
        runtime.DLA_core = options.dla_core
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise TrtError(f"TensorRT built an engine it cannot load back: {_last_errors(errors)}")
    layers_json = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return BuildResult(engine_bytes, layers_json, timing_cache, _io_tensors(engine), not weak_typing_dla, timing_cache_reused)


# ---------------------------------------------------------------------------------------- runtime
@dataclass
class LayerTimes:
    """Milliseconds per layer reported by TensorRT's profiler, one list entry per execution."""

    ms: dict[str, list[float]] = field(default_factory=dict)


def _make_profiler(times: LayerTimes) -> trt.IProfiler:
    with requires("tensorrt"):
        import tensorrt as trt

    class _Profiler(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            times.ms.setdefault(layer_name, []).append(ms)

    return _Profiler()


# Callbacks of a data-dependent output, supplied by the backend (which owns the buffers):
# reallocate(name, nbytes, alignment) -> device address of at least nbytes; notify(name, shape).
Reallocate = Callable[[str, int, int], int]
NotifyShape = Callable[[str, Shape], None]


class _OutputAllocatorCallbacks:
    """What TensorRT's output allocator calls, as plain Python (no TensorRT object is touched here).

    TensorRT's Python trampoline (PyOutputAllocator) looks these methods up by name on the
    allocator object: `reallocate_output_async` first (TensorRT 10+ passes the stream), falling
    back to `reallocate_output` when a subclass lacks it (older bindings call only that), and
    `notify_shape` once the output's shape is known. Both reallocation names are defined, so
    every binding finds the one it calls. They live in this mixin rather than in the
    `trt.IOutputAllocator` subclass because the 10.13 name list lacks both strings (its
    PyOutputAllocator::reallocateOutput/reallocateOutputAsync symbols and the 10.13 stub's
    docstring show the callbacks are there), and a hasattr guard cannot detect them: from 10.13
    on the base class binds only __init__, so hasattr(trt.IOutputAllocator, ...) is False even
    where TensorRT does call them. tests/test_trt_output_allocator.py checks these names and
    parameters against that docstring instead.

    An exception must not escape into TensorRT (it would print it and carry on with a null
    pointer): it is kept in `errors` and reported by LoadedEngine.execute.
    """

    def __init__(self, reallocate: Reallocate, notify: NotifyShape) -> None:
        self._reallocate = reallocate
        self._notify = notify
        self.errors: list[str] = []

    def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
        try:
            return int(self._reallocate(str(tensor_name), int(size), max(int(alignment), 1)))
        except Exception as exc:  # noqa: BLE001 - TensorRT gets 0 (allocation failed), execute() raises
            self.errors.append(f"{tensor_name}: cannot allocate {size} bytes ({exc})")
            return 0

    def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int, stream: int) -> int:
        # Buffers come from cudaMalloc (synchronous) and are freed only after the run: the stream is not needed.
        return self.reallocate_output(tensor_name, memory, size, alignment)

    def notify_shape(self, tensor_name: str, shape: trt.Dims) -> None:
        try:
            self._notify(str(tensor_name), _shape(shape))
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"{tensor_name}: shape notification failed ({exc})")


def _make_output_allocator(reallocate: Reallocate, notify: NotifyShape) -> trt.IOutputAllocator:
    with requires("tensorrt"):
        import tensorrt as trt

    class _OutputAllocator(_OutputAllocatorCallbacks, trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)  # pybind11 trampolines need the base initialised explicitly
            _OutputAllocatorCallbacks.__init__(self, reallocate, notify)

    return _OutputAllocator()


class LoadedEngine:
    """A deserialized engine and one execution context, addressed by tensor name."""

    def __init__(
        self,
        data: bytes,
        *,
        dla_core: int | None = None,
        version_compatible: bool = False,
        plugin_libs: Sequence[str] = (),
        verbose: bool = False,
    ) -> None:
        require()
        with requires("tensorrt"):
            import tensorrt as trt

        self._errors: list[str] = []
        self._logger = _make_logger(self._errors, verbose)
        trt.init_libnvinfer_plugins(self._logger, "")
        load_plugin_libraries(plugin_libs)
        self._runtime = trt.Runtime(self._logger)
        if version_compatible:
            self._runtime.engine_host_code_allowed = True  # the engine embeds its own lean runtime
        if dla_core is not None:
            self._runtime.DLA_core = dla_core
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise TrtError(f"TensorRT could not deserialize the engine: {_last_errors(self._errors)}")
        self._engine = engine
        context = engine.create_execution_context()
        if context is None:
            raise TrtError(f"TensorRT could not create an execution context: {_last_errors(self._errors)}")
        self._context = context
        self._profiler: trt.IProfiler | None = None  # referenced here so Python keeps it alive
        self._allocators: dict[str, _OutputAllocatorCallbacks] = {}  # likewise, by output name
        self.tensors = _io_tensors(engine)
        self.num_profiles = int(engine.num_optimization_profiles)

    def profile_ranges(self, name: str) -> list[ShapeRange]:
        """(min, opt, max) of input `name` in each optimization profile."""
        ranges = []
        for index in range(self.num_profiles):
            lo, opt, hi = self._engine.get_tensor_profile_shape(name, index)
            ranges.append((_shape(lo), _shape(opt), _shape(hi)))
        return ranges

    def set_profile(self, index: int, stream_handle: int) -> None:
        if not self._context.set_optimization_profile_async(index, stream_handle):
            raise TrtError(f"cannot switch to optimization profile {index}: {_last_errors(self._errors)}")

    def set_input_shape(self, name: str, shape: Shape) -> None:
        if not self._context.set_input_shape(name, _dims(shape)):
            raise TrtError(f"input {name} cannot take shape {shape}: {_last_errors(self._errors)}")

    def tensor_shape(self, name: str) -> Shape:
        """The shape of `name` for the input shapes set now (outputs are inferred from them)."""
        return _shape(self._context.get_tensor_shape(name))

    def set_tensor_address(self, name: str, address: int) -> None:
        if not self._context.set_tensor_address(name, address):
            raise TrtError(f"cannot bind tensor {name}: {_last_errors(self._errors)}")

    def set_output_allocator(self, name: str, reallocate: Reallocate, notify: NotifyShape) -> None:
        """Let TensorRT ask for the memory of output `name` during each run and report its shape.

        For outputs whose shape depends on the data (get_tensor_shape keeps -1 after every input
        shape is set, e.g. after INMSLayer): `reallocate(name, nbytes, alignment)` returns a
        device address of at least nbytes, `notify(name, shape)` receives the real shape.
        """
        allocator = _make_output_allocator(reallocate, notify)
        if not self._context.set_output_allocator(name, allocator):
            raise TrtError(f"cannot set an output allocator for {name}: {_last_errors(self._errors)}")
        self._allocators[name] = cast(_OutputAllocatorCallbacks, allocator)  # the subclass mixes both in

    def execute(self, stream_handle: int) -> None:
        """Queue one inference on the stream (asynchronous; the caller synchronizes)."""
        for allocator in self._allocators.values():
            allocator.errors.clear()
        ok = self._context.execute_async_v3(stream_handle)
        allocator_errors = [e for a in self._allocators.values() for e in a.errors]
        if not ok or allocator_errors:
            raise TrtError(f"inference failed: {'; '.join(allocator_errors) or _last_errors(self._errors)}")

    def attach_profiler(self) -> LayerTimes:
        """Report per-layer times from now on (each execution then synchronizes inside TensorRT)."""
        times = LayerTimes()
        self._profiler = _make_profiler(times)
        self._context.profiler = self._profiler
        return times

    def close(self) -> None:
        """Release the context, then the engine, then the runtime (TensorRT's required order)."""
        self._allocators.clear()
        for attr in ("_context", "_engine", "_runtime"):
            if hasattr(self, attr):
                delattr(self, attr)
