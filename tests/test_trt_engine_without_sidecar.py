"""Engines built elsewhere (trtexec, Polygraphy: no sidecar) run through trt-infer with --spec or --onnx.

No TensorRT or GPU here: a fake `tensorrt` whose "engine" is an ONNX model executed by ONNX
Runtime, over the host-memory fake of cuda_rt from test_trt_output_allocator. The real
TrtBackend, trt_engine.LoadedEngine and trt-infer code run; so trt-infer on the "engine" must give
exactly the detections of trt-infer on the ONNX with ort-cpu.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import test_trt_output_allocator as fakes
from PIL import Image

from retinanet_trt.cli import infer as infer_cli
from retinanet_trt.errors import UsageError
from retinanet_trt.runtime.backends.ort_backend import cpu_session
from retinanet_trt.spec.metadata import read_spec
from retinanet_trt.tensorrt import cuda as cuda_rt
from retinanet_trt.tensorrt import engine as trt_engine


class OrtEngine:
    """An ICudaEngine look-alike over an ONNX file with static shapes."""

    num_optimization_profiles = 1

    def __init__(self, onnx_path: Path) -> None:
        self.session = cpu_session(onnx_path)
        self.io = [(t.name, "INPUT", tuple(t.shape)) for t in self.session.get_inputs()]
        self.io += [(t.name, "OUTPUT", tuple(t.shape)) for t in self.session.get_outputs()]

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, i: int) -> str:
        return self.io[i][0]

    def get_tensor_mode(self, name: str) -> str:
        return next(mode for n, mode, _ in self.io if n == name)

    def get_tensor_dtype(self, name: str) -> Any:
        return types.SimpleNamespace(name="FLOAT")

    def get_tensor_shape(self, name: str) -> list[int]:
        return list(next(shape for n, _, shape in self.io if n == name))

    def create_execution_context(self) -> OrtContext:
        return OrtContext(self)


class OrtContext:
    def __init__(self, engine: OrtEngine) -> None:
        self.engine = engine
        self.addresses: dict[str, int] = {}

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        return True

    def set_input_shape(self, name: str, dims: list[int]) -> bool:
        return list(dims) == self.engine.get_tensor_shape(name)

    def get_tensor_shape(self, name: str) -> list[int]:
        return self.engine.get_tensor_shape(name)

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        name, _, shape = self.engine.io[0]
        count = int(np.prod(shape))
        images = np.frombuffer(fakes.MEMORY[self.addresses[name]], np.float32, count=count).reshape(shape)
        for out, value in zip(self.engine.session.get_outputs(), self.engine.session.run(None, {name: images.copy()})):
            fakes._write(self.addresses[out.name], np.ascontiguousarray(value, np.float32))
        return True


@pytest.fixture()
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> Any:
    """install(onnx_path): makes tensorrt deserialize any engine file as that ONNX model."""
    fakes.MEMORY.clear()
    for name, value in {
        "set_device": lambda device: None,
        "device_info": lambda device: {"name": "Fake GPU"},
        "Stream": fakes._Stream, "Event": fakes._Event, "DeviceBuffer": fakes._Buffer, "PinnedBuffer": fakes._Buffer,
        "copy_h2d_async": fakes._copy("h2d"), "copy_d2h_async": fakes._copy("d2h"),
    }.items():
        monkeypatch.setattr(cuda_rt, name, value)
    monkeypatch.setattr(trt_engine, "available", lambda: (True, "TensorRT (fake) on Fake GPU"))

    def install(onnx_path: Path) -> None:
        trt = fakes._fake_tensorrt(OrtEngine(onnx_path))  # type: ignore[arg-type]
        monkeypatch.setitem(sys.modules, "tensorrt", trt)

    return install


@pytest.fixture(scope="module")
def static_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from retinanet_trt.export.pipeline import ExportOptions, export_onnx
    from retinanet_trt.model import build_model
    from retinanet_trt.spec.presets import get_preset

    spec = get_preset("tiny")
    spec.postprocess.score_thresh = [0.0] * 5  # random weights: keep plenty of detections to compare
    path = tmp_path_factory.mktemp("static") / "tiny_static.onnx"
    export_onnx(build_model(spec, seed=0), spec, path, ExportOptions(input_hw=(256, 320)))
    return path


def _photo(folder: Path) -> Path:
    from importlib import resources

    folder.mkdir(exist_ok=True)
    with resources.as_file(resources.files("skimage.data") / "astronaut.png") as src:
        image = Image.open(src).convert("RGB").resize((320, 240))
    image.save(folder / "astronaut.png")
    return folder / "astronaut.png"


def _results(out: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "annotated"} for r in json.loads((out / "detections.json").read_text())]


@pytest.mark.parametrize("how", ["onnx", "spec"])
def test_an_engine_without_a_sidecar_runs_through_trt_infer(how: str, static_tiny: Path, fake_trt: Any, tmp_path: Path) -> None:
    fake_trt(static_tiny)
    engine = tmp_path / "built_by_trtexec.engine"
    engine.write_bytes(b"serialized plan bytes")
    photo = _photo(tmp_path / "in")
    if how == "onnx":
        extra = ["--onnx", str(static_tiny)]
    else:
        spec_file = tmp_path / "spec.json"
        spec_file.write_text(read_spec(static_tiny).to_json())
        extra = ["--spec", str(spec_file)]
    assert infer_cli.main([str(engine), str(photo), "--out", str(tmp_path / "trt"), "--no-draw", *extra]) == 0
    assert infer_cli.main([str(static_tiny), str(photo), "--out", str(tmp_path / "ort"), "--no-draw"]) == 0
    trt_results, ort_results = _results(tmp_path / "trt"), _results(tmp_path / "ort")
    assert len(ort_results) > 10 and trt_results == ort_results


def test_an_engine_without_sidecar_or_spec_says_what_to_pass(static_tiny: Path, fake_trt: Any, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    fake_trt(static_tiny)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    assert infer_cli.main([str(engine), str(_photo(tmp_path / "in")), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no sidecar" in err[0] and "--spec" in err[0] and "--onnx" in err[0]


def test_a_spec_that_does_not_match_the_engine_bindings_is_refused(static_tiny: Path, fake_trt: Any, tmp_path: Path) -> None:
    from retinanet_trt.runtime.detector import Detector

    fake_trt(static_tiny)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    spec = read_spec(static_tiny)
    spec.head.num_classes = 3
    spec.postprocess.class_names = spec.postprocess.class_names[:3]
    spec.postprocess.label_map = spec.postprocess.label_map[:3]
    with pytest.raises(UsageError, match=r"cls_p3 has 45 channels, the spec's head needs 27"):
        Detector.load(engine, "trt", spec=spec)


def test_backend_trt_on_an_onnx_file_says_to_build_an_engine(static_tiny: Path) -> None:
    from retinanet_trt.runtime.detector import Detector

    with pytest.raises(UsageError, match="runs a TensorRT engine.*trt-build"):
        Detector.load(static_tiny, "trt")


def test_onnx_of_a_truncated_file_is_one_line(static_tiny: Path, fake_trt: Any, tmp_path: Path) -> None:
    from retinanet_trt.runtime.detector import Detector

    fake_trt(static_tiny)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(static_tiny.read_bytes()[:3000])
    with pytest.raises(UsageError, match="not a readable ONNX file"):
        Detector.load(engine, "trt", onnx=cut)
    assert onnx.load(str(static_tiny)) is not None
