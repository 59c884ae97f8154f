"""Data-dependent outputs in the TensorRT backend, run against fakes (no TensorRT or GPU here).

A fake `tensorrt` module (engine, context, runtime) and fake cuda_rt buffers over host memory
exercise the real code of trt_engine.LoadedEngine / the IOutputAllocator subclass and of
TrtBackend: outputs whose shape stays -1 after set_input_shape get an output allocator, TensorRT
(the fake context) asks it for memory and notifies the shape, and exactly that shape comes back.
What TensorRT itself does (when it calls which callback, alignment, INMSLayer's sizes) is only
modelled here from its documentation and binding source; it is checked on a GPU, not here.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retinanet_trt.errors import UsageError
from retinanet_trt.runtime.backends.trt_backend import TrtBackend
from retinanet_trt.spec.presets import get_preset
from retinanet_trt.tensorrt import cuda as cuda_rt
from retinanet_trt.tensorrt import engine as trt_engine
from retinanet_trt.tensorrt.build import SIDECAR_FORMAT

ALIGN = 256
MEMORY: dict[int, bytearray] = {}  # fake device and pinned memory, by address


# ------------------------------------------------------------------------------------ fake cuda_rt
class _Buffer:
    next_ptr = 0x10000

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.ptr = _Buffer.next_ptr
        _Buffer.next_ptr += (self.nbytes + ALIGN - 1) // ALIGN * ALIGN + ALIGN
        MEMORY[self.ptr] = bytearray(self.nbytes)
        ALLOCATED.append(self)

    def close(self) -> None:
        if self.ptr:
            del MEMORY[self.ptr]
            self.ptr = 0

    def view(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64))
        assert count * dtype.itemsize <= self.nbytes
        return np.frombuffer(MEMORY[self.ptr], dtype=dtype, count=count).reshape(shape)


ALLOCATED: list[_Buffer] = []
COPIES: list[tuple[str, int]] = []  # (direction, nbytes)


def _copy(direction: str) -> Any:
    def copy(dst: _Buffer, src: _Buffer, nbytes: int, stream: Any) -> None:
        assert 0 <= nbytes <= min(dst.nbytes, src.nbytes), (nbytes, dst.nbytes, src.nbytes)
        MEMORY[dst.ptr][:nbytes] = MEMORY[src.ptr][:nbytes]
        COPIES.append((direction, nbytes))

    return copy


class _Stream:
    handle = 7
    raw = 7
    syncs = 0

    def synchronize(self) -> None:
        _Stream.syncs += 1

    def close(self) -> None:
        pass


class _Event:
    def record(self, stream: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def ms_since(self, start: Any) -> float:
        return 0.0

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------ fake tensorrt
def _write(ptr: int, array: np.ndarray) -> None:
    data = array.tobytes()
    MEMORY[ptr][: len(data)] = data


class FakeContext:
    """Follows IExecutionContext: -1 stays in data-dependent output shapes; enqueue asks the allocator."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.input_shape: tuple[int, ...] | None = None
        self.addresses: dict[str, int] = {}
        self.allocators: dict[str, Any] = {}
        self.memory: dict[str, tuple[int, int]] = {}  # output -> (address, size) last returned by the allocator
        self.profiler = None

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        return True

    def set_input_shape(self, name: str, dims: list[int]) -> bool:
        self.input_shape = tuple(dims)
        return True

    def get_tensor_shape(self, name: str) -> list[int]:
        assert self.input_shape is not None
        n = self.input_shape[0]
        return {"images": list(self.input_shape), "num_dets": [n], "boxes": [n, -1, 4] if self.engine.dds else [n, 3, 4],
                "scores": [n, -1] if self.engine.dds else [n, 3], "labels": [n, -1] if self.engine.dds else [n, 3]}[name]

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def set_output_allocator(self, name: str, allocator: Any) -> bool:
        self.allocators[name] = allocator
        return True

    def execute_async_v3(self, stream: int) -> bool:
        assert self.input_shape is not None
        n, d = self.input_shape[0], self.engine.detections  # D depends on the data
        images = np.frombuffer(MEMORY[self.addresses["images"]], np.float32, count=int(np.prod(self.input_shape)))
        base = float(images.reshape(self.input_shape)[:, 0, 0, 0].sum())
        boxes = (np.arange(n * d * 4, dtype=np.float32) + base).reshape(n, d, 4)
        outputs = {"num_dets": np.full((n,), d, np.int32), "boxes": boxes, "scores": np.full((n, d), 0.5, np.float32),
                   "labels": np.zeros((n, d), np.int32)}
        for name, value in outputs.items():
            if name not in self.allocators:
                _write(self.addresses[name], value)
                continue
            allocator = self.allocators[name]
            current, _ = self.memory.get(name, (0, 0))
            size = max(value.nbytes, 1)  # TensorRT asks for a positive size even for an empty tensor
            if self.engine.async_callbacks:
                ptr = allocator.reallocate_output_async(name, current, size, ALIGN, stream)
            else:  # older bindings call only reallocate_output
                ptr = allocator.reallocate_output(name, current, size, ALIGN)
            if not ptr:
                return False
            self.memory[name] = (ptr, size)
            _write(ptr, value)
            allocator.notify_shape(name, list(value.shape))
        return True


class FakeEngine:
    def __init__(self, dds: bool, async_callbacks: bool = True) -> None:
        self.dds, self.async_callbacks, self.detections = dds, async_callbacks, 2
        self.names = ["images", "num_dets", "boxes", "scores", "labels"]
        self.context: FakeContext | None = None

    num_optimization_profiles = 1

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == "images" else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> Any:
        return types.SimpleNamespace(name="INT32" if name in ("num_dets", "labels") else "FLOAT")

    def get_tensor_shape(self, name: str) -> list[int]:
        return {"images": [1, 3, 8, 8], "num_dets": [1], "boxes": [1, -1 if self.dds else 3, 4],
                "scores": [1, -1 if self.dds else 3], "labels": [1, -1 if self.dds else 3]}[name]

    def create_execution_context(self) -> FakeContext:
        self.context = FakeContext(self)
        return self.context


def _fake_tensorrt(engine: FakeEngine) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")

    class ILogger:
        class Severity:
            ERROR, WARNING = 1, 2

        def __init__(self) -> None:
            pass

    class IOutputAllocator:  # like the 10.13+ bindings: the base binds only __init__
        def __init__(self) -> None:
            self.base_initialised = True

    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine:
            return engine

    trt.ILogger = ILogger  # type: ignore[attr-defined]
    trt.IOutputAllocator = IOutputAllocator  # type: ignore[attr-defined]
    trt.Runtime = Runtime  # type: ignore[attr-defined]
    trt.Builder = object  # type: ignore[attr-defined]
    trt.Dims = list  # type: ignore[attr-defined]
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")  # type: ignore[attr-defined]
    trt.init_libnvinfer_plugins = lambda logger, namespace: True  # type: ignore[attr-defined]
    trt.get_plugin_registry = lambda: types.SimpleNamespace()  # type: ignore[attr-defined]
    trt.__version__ = "10.13.0.35"  # type: ignore[attr-defined]
    return trt


@pytest.fixture
def make_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    MEMORY.clear()
    ALLOCATED.clear()
    COPIES.clear()
    for name, value in {
        "set_device": lambda device: None,
        "device_info": lambda device: {"name": "Fake GPU"},
        "Stream": _Stream, "Event": _Event, "DeviceBuffer": _Buffer, "PinnedBuffer": _Buffer,
        "copy_h2d_async": _copy("h2d"), "copy_d2h_async": _copy("d2h"),
    }.items():
        monkeypatch.setattr(cuda_rt, name, value)
    monkeypatch.setattr(trt_engine, "available", lambda: (True, "TensorRT (fake) on Fake GPU"))

    def make(engine: FakeEngine, **options: Any) -> TrtBackend:
        monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(engine))
        path = tmp_path / "m.engine"
        path.write_bytes(b"\0" * 16)
        sidecar = {"format": SIDECAR_FORMAT, "engine_bytes": 16, "tensorrt_version": "10.13.0.35",
                   "gpu": {"name": "Fake GPU"}, "options": {}, "spec": get_preset("tiny").to_dict()}
        (tmp_path / "m.engine.json").write_text(json.dumps(sidecar))
        return TrtBackend(path, **options)

    return make


def _images(value: float = 0.0) -> np.ndarray:
    images = np.zeros((1, 3, 8, 8), np.float32)
    images[0, 0, 0, 0] = value
    return images


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("async_callbacks", [True, False])
def test_data_dependent_outputs_come_back_in_the_notified_shape(make_backend: Any, async_callbacks: bool) -> None:
    engine = FakeEngine(dds=True, async_callbacks=async_callbacks)
    backend = make_backend(engine)
    context = engine.context
    assert context is not None
    assert set(context.allocators) == {"boxes", "scores", "labels"}  # only the outputs whose shape stays -1
    assert set(context.addresses) == {"images", "num_dets"}
    for allocator in context.allocators.values():
        assert isinstance(allocator, sys.modules["tensorrt"].IOutputAllocator) and allocator.base_initialised

    out = backend.run(_images(1.0))
    assert out["boxes"].shape == (1, 2, 4) and out["scores"].shape == (1, 2)
    np.testing.assert_array_equal(out["boxes"].ravel(), np.arange(8, dtype=np.float32) + 1.0)
    np.testing.assert_array_equal(out["num_dets"], [2])
    first_ptr = context.memory["boxes"][0]
    # The D2H copies are exactly the notified sizes: num_dets (4 bytes), boxes 2x4 float32, scores and labels 2 each.
    assert sorted(n for d, n in COPIES if d == "d2h") == [4, 8, 8, 32]

    # More detections: TensorRT asks for more memory, the buffer grows (at least doubling), old one freed after the run.
    COPIES.clear()
    engine.detections = 5
    out = backend.run(_images(2.0))
    assert out["boxes"].shape == (1, 5, 4) and out["scores"].shape == (1, 5)
    np.testing.assert_array_equal(out["boxes"].ravel(), np.arange(20, dtype=np.float32) + 2.0)
    grown_ptr = context.memory["boxes"][0]
    assert grown_ptr != first_ptr and first_ptr not in MEMORY
    assert sorted(n for d, n in COPIES if d == "d2h") == [4, 20, 20, 80]

    # Fewer detections: the grown buffer is reused, and only the smaller notified shape is copied.
    COPIES.clear()
    engine.detections = 1
    out = backend.run(_images(3.0))
    assert context.memory["boxes"][0] == grown_ptr
    assert out["boxes"].shape == (1, 1, 4)
    np.testing.assert_array_equal(out["boxes"].ravel(), np.arange(4, dtype=np.float32) + 3.0)
    assert sorted(n for d, n in COPIES if d == "d2h") == [4, 4, 4, 16]

    # No detections: empty arrays of the notified shape, nothing copied for them.
    COPIES.clear()
    engine.detections = 0
    out = backend.run(_images())
    assert out["boxes"].shape == (1, 0, 4) and out["scores"].shape == (1, 0)
    assert sorted(n for d, n in COPIES if d == "d2h") == [4]
    backend.close()
    assert not MEMORY


def test_static_engine_keeps_fixed_buffers(make_backend: Any) -> None:
    engine = FakeEngine(dds=False)
    backend = make_backend(engine, cuda_graph=False)
    context = engine.context
    assert context is not None
    assert context.allocators == {}
    assert set(context.addresses) == {"images", "num_dets", "boxes", "scores", "labels"}
    count = len(ALLOCATED)
    out = backend.run(_images(1.0))
    assert out["boxes"].shape == (1, 3, 4)
    assert len(ALLOCATED) == count  # nothing allocated per run
    assert sorted(n for d, n in COPIES if d == "d2h") == [4, 12, 12, 48]
    backend.close()


def test_cuda_graph_is_refused_for_data_dependent_outputs(make_backend: Any) -> None:
    with pytest.raises(UsageError, match="data-dependent outputs \\(boxes, scores, labels\\).*without cuda_graph"):
        make_backend(FakeEngine(dds=True), cuda_graph=True)


def test_allocation_failure_is_reported_not_swallowed(make_backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = make_backend(FakeEngine(dds=True))

    def refuse(nbytes: int) -> _Buffer:
        raise cuda_rt.CudaError("cudaMalloc failed: out of memory")

    monkeypatch.setattr(cuda_rt, "DeviceBuffer", refuse)
    with pytest.raises(trt_engine.TrtError, match="boxes: cannot allocate 32 bytes .*out of memory"):
        backend.run(_images())


def test_callback_names_match_the_tensorrt_binding() -> None:
    """The callbacks sit outside the name check (10.13's list lacks them); check them against the
    10.13 stub's IOutputAllocator docstring, and against the 10.3 / 11.4 name lists when present."""
    callbacks = trt_engine._OutputAllocatorCallbacks
    ours = {name: list(inspect.signature(getattr(callbacks, name)).parameters)
            for name in ("reallocate_output", "reallocate_output_async", "notify_shape")}
    stub = next((Path(p) / "tensorrt_bindings" / "tensorrt.pyi" for p in sys.path
                 if (Path(p) / "tensorrt_bindings" / "tensorrt.pyi").is_file()), None)
    if stub is not None:
        text = stub.read_text()
        start = text.index("class IOutputAllocator")
        doc = text[start: text.index("\nclass ", start + 1)]
        documented = {m[0]: ["self", *(a.strip() for a in m[1].split(","))]
                      for m in re.findall(r"def (\w+)\(self, ([^)]*)\)", doc)}
        assert documented == ours
    lists = Path(__file__).resolve().parents[2] / "shared" / "facts" / "tensorrt-api"
    for version in ("10.3", "11.4"):
        names_file = lists / f"tensorrt-{version}.names"
        if names_file.is_file():
            assert set(ours) <= set(names_file.read_text().split()), version
    # The TensorRT subclass itself defines only __init__ (everything else comes from the mixin).
    source = ast.parse(inspect.getsource(trt_engine._make_output_allocator).lstrip())
    cls = next(n for n in ast.walk(source) if isinstance(n, ast.ClassDef))
    assert [f.name for f in cls.body if isinstance(f, ast.FunctionDef)] == ["__init__"]
